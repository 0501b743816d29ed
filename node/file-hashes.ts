// sha256 of served model files, computed in the background after loading (a GGUF can be many GB)
// and cached in the data dir by path, size and mtime, so a restart does not hash again.
import { readFile, rename, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { sha256File } from '../src/models/gguf.ts'

interface CacheEntry {
  size: number
  mtimeMs: number
  sha256: string
}

export class FileHashes {
  private cache: Record<string, CacheEntry> | undefined
  private readonly file: string

  constructor(dataDir: string) {
    this.file = join(dataDir, 'file-hashes.json')
  }

  async hash(path: string, signal?: AbortSignal): Promise<string> {
    const cache = await this.load()
    const st = await stat(path)
    const hit = cache[path]
    if (hit != null && hit.size === st.size && hit.mtimeMs === st.mtimeMs) return hit.sha256
    const sha256 = await sha256File(path, signal ? { signal } : {})
    cache[path] = { size: st.size, mtimeMs: st.mtimeMs, sha256 }
    await writeFile(`${this.file}.tmp`, JSON.stringify(cache))
    await rename(`${this.file}.tmp`, this.file)
    return sha256
  }

  private async load(): Promise<Record<string, CacheEntry>> {
    if (this.cache) return this.cache
    try {
      this.cache = JSON.parse(await readFile(this.file, 'utf8')) as Record<string, CacheEntry>
    } catch {
      this.cache = {}
    }
    return this.cache
  }
}
