// Helpers for the Models API tests: a multipart upload as a browser or the docs' curl sends it.
import { readFile } from 'node:fs/promises'

/** POSTs /api/models/upload with the given text fields and (optionally) a file part named `file`. */
export async function uploadModel(
  gwUrl: string,
  apiKey: string | undefined,
  fields: Record<string, string>,
  file?: { path: string; name?: string } | { bytes: Uint8Array; name?: string },
): Promise<Response> {
  const form = new FormData()
  if (file != null) {
    const bytes = 'path' in file ? await readFile(file.path) : file.bytes
    form.append('file', new Blob([new Uint8Array(bytes)]), file.name ?? 'model.gguf')
  }
  for (const [k, v] of Object.entries(fields)) form.append(k, v)
  return fetch(`${gwUrl}/api/models/upload`, {
    method: 'POST',
    headers: apiKey ? { authorization: `Bearer ${apiKey}` } : {},
    body: form,
  })
}
