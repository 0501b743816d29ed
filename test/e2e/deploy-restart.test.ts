// A node killed in the middle of fetching a model's weights restarts and completes the deploy:
// the deployment is kept in its data dir and the blocks it already had are read back from its
// blockstore. Real processes (`cluster node`), a real gateway holding the upload, real bitswap.
import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import OpenAI from 'openai'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type RunningGateway, startGateway } from '../../gateway/gateway.ts'
import { fundedUser, smallModelPath, tempDir, waitFor } from '../helpers/fixtures.ts'
import { uploadModel } from '../helpers/models.ts'
import { cluster, exited, killAll } from '../helpers/processes.ts'

const blockCount = async (dataDir: string): Promise<number> => {
  let n = 0
  for (const e of await readdir(join(dataDir, 'ipfs', 'blocks'), { withFileTypes: true, recursive: true }).catch(
    () => [],
  )) {
    if (e.isFile() && e.name.endsWith('.data')) n++
  }
  return n
}

describe('a node killed mid-fetch', () => {
  let gw: RunningGateway
  let apiKey: string
  const cleanups: Array<() => Promise<void>> = []

  beforeAll(async () => {
    const g = await tempDir('restart-gw')
    cleanups.push(g.remove)
    gw = await startGateway({ dataDir: g.path, listen: ['/ip4/127.0.0.1/tcp/0'], port: 0 })
    apiKey = await fundedUser(gw, 'restart@example.com')
  })

  afterAll(async () => {
    await killAll()
    await gw?.stop()
    for (const c of cleanups) await c()
  })

  it('restarts and completes the deploy, then serves the model', async () => {
    const path = await smallModelPath()
    const up = await uploadModel(gw.url, apiKey, { name: 'restart-model' }, { path })
    expect(up.status).toBe(201)
    const { cid, sha256 } = (await up.json()) as { cid: string; sha256: string }
    const n = await tempDir('restart-node')
    cleanups.push(n.remove)
    const args = ['node', '--data-dir', n.path, '--listen', '/ip4/127.0.0.1/tcp/0', '--gpu', 'off', '--threads', '1']
    const bootstrap = ['--bootstrap', ...gw.multiaddrs()]

    const first = cluster([...args, ...bootstrap, '--model', `cid:${cid}`, '--model-id', 'restart-model'])
    // Killed once some blocks are in, before the file is complete.
    await waitFor(async () => (await blockCount(n.path)) >= 3, 60_000, 'the fetch to start')
    first.kill('SIGKILL')
    await exited(first)
    const had = await blockCount(n.path)
    const total = Math.ceil((await readFile(path)).length / (1024 * 1024))
    expect(had).toBeLessThan(total)
    expect(existsSync(join(n.path, 'models', `${cid}.gguf`))).toBe(false)
    const kept = JSON.parse(await readFile(join(n.path, 'deployments.json'), 'utf8')) as Array<{ cid: string }>
    expect(kept.map((d) => d.cid)).toEqual([cid])

    // Restarted with no --model at all: the kept deployment resumes.
    const second = cluster([...args, ...bootstrap])
    await waitFor(
      () => gw.directory.nodesServing('restart-model').length === 1,
      90_000,
      'the model served after restart',
    )
    expect(second.exitCode).toBeNull()
    const file = await readFile(join(n.path, 'models', `${cid}.gguf`))
    expect(createHash('sha256').update(file).digest('hex')).toBe(sha256)

    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey, maxRetries: 0 })
    const out = await client.chat.completions.create({
      model: 'restart-model',
      messages: [{ role: 'user', content: 'hi' }],
      max_tokens: 3,
    })
    expect(out.choices[0]?.message.role).toBe('assistant')
  }, 180_000)
})
