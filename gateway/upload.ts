// Receives a multipart/form-data model upload: the file part is streamed to a temporary file (hashed
// and counted on the way, never held in memory), the other parts are small text fields. A file that
// does not start like a GGUF, or that passes the size limit, is refused as soon as that is known.
import { createHash } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { rm } from 'node:fs/promises'
import { Readable, Transform } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import busboy from 'busboy'
import type { Context } from 'hono'
import { ApiError, invalidRequest } from './errors.ts'
import { nodeBindings } from './node-request.ts'

const GGUF_MAGIC = Buffer.from('GGUF', 'latin1')
/** Bytes of a refused upload still read (and dropped) before the connection is closed instead. */
const DRAIN_AFTER_REFUSAL = 64 * 1024 * 1024

export interface ReceivedUpload {
  fields: Record<string, string>
  file?: { path: string; size: number; sha256: string; filename: string }
}

export const uploadTooLarge = (max: number): ApiError => {
  const err = new ApiError(
    413,
    `The model file exceeds this gateway's upload limit of ${max} bytes.`,
    'invalid_request_error',
    'file_too_large',
  )
  err.headers.Connection = 'close'
  return err
}

const notGguf = (): ApiError =>
  invalidRequest('The file is not a GGUF model (it does not start with the GGUF magic bytes).', 'file', 'invalid_model')

/**
 * Streams the request's multipart body: the part named `file` goes to `path`. Rejects with an
 * ApiError (400/413) on a body that is not multipart, a second file, a non-GGUF start or too many bytes;
 * whatever was written is removed then.
 */
export async function receiveUpload(c: Context, path: string, maxBytes: number): Promise<ReceivedUpload> {
  const type = c.req.header('content-type') ?? ''
  if (!/^multipart\/form-data/i.test(type)) {
    throw invalidRequest('Send the upload as multipart/form-data (curl -F "file=@model.gguf" -F "name=…").')
  }
  const declared = Number.parseInt(c.req.header('content-length') ?? '', 10)
  // The multipart framing adds a little around the file: allow it, and catch the file itself below.
  if (Number.isFinite(declared) && declared > maxBytes + 1024 * 1024) throw uploadTooLarge(maxBytes)
  const node = nodeBindings(c)
  const body: Readable =
    node != null && !node.incoming.readableDidRead
      ? node.incoming
      : Readable.fromWeb((c.req.raw.body ?? new ReadableStream()) as import('node:stream/web').ReadableStream)

  let parser: busboy.Busboy
  try {
    parser = busboy({
      headers: { 'content-type': type },
      limits: { files: 1, fields: 16, fieldSize: 8 * 1024, fileSize: maxBytes, parts: 20 },
    })
  } catch {
    throw invalidRequest('The multipart body has no boundary.')
  }
  const fields: Record<string, string> = {}
  let file: ReceivedUpload['file']
  let writing: Promise<void> | undefined
  let failure: ApiError | undefined
  const fail = (err: ApiError): void => {
    failure ??= err
  }

  parser.on('field', (name, value, info) => {
    if (info.valueTruncated) fail(invalidRequest(`The field '${name}' is too long.`, name))
    else fields[name] = value
  })
  parser.on('file', (name, stream, info) => {
    if (name !== 'file' || file != null) {
      stream.resume()
      if (name !== 'file') fail(invalidRequest(`Unexpected file field '${name}': send the model as 'file'.`, name))
      return
    }
    const hash = createHash('sha256')
    const entry = { path, size: 0, sha256: '', filename: info.filename ?? '' }
    file = entry
    let head = Buffer.alloc(0)
    const check = new Transform({
      transform(chunk: Buffer, _enc, done) {
        if (head.length < GGUF_MAGIC.length) {
          head = Buffer.concat([head, chunk.subarray(0, GGUF_MAGIC.length - head.length)])
          if (head.length >= GGUF_MAGIC.length && !head.equals(GGUF_MAGIC)) return done(notGguf())
        }
        entry.size += chunk.length
        hash.update(chunk)
        done(null, chunk)
      },
      flush(done) {
        if (!head.equals(GGUF_MAGIC)) return done(notGguf())
        entry.sha256 = hash.digest('hex')
        done()
      },
    })
    stream.on('limit', () => check.destroy(uploadTooLarge(maxBytes)))
    writing = pipeline(stream, check, createWriteStream(path)).catch((err: unknown) => {
      stream.resume()
      fail(err instanceof ApiError ? err : invalidRequest(`The upload could not be read: ${(err as Error).message}`))
    })
  })
  parser.on('partsLimit', () => fail(invalidRequest('Too many parts in the multipart body.')))
  parser.on('fieldsLimit', () => fail(invalidRequest('Too many fields in the multipart body.')))

  // Once the upload is refused, the rest of the body is read and dropped (so the client sees the
  // answer rather than a reset) up to a bound; past it the connection is closed.
  let dropped = 0
  const guard = new Transform({
    transform(chunk: Buffer, _enc, done) {
      if (failure == null) return done(null, chunk)
      dropped += chunk.length
      if (dropped > DRAIN_AFTER_REFUSAL) return done(failure)
      done()
    },
  })
  try {
    await pipeline(body, guard, parser)
  } catch (err) {
    if (failure == null) fail(invalidRequest(`The multipart body is malformed: ${(err as Error).message}`))
  }
  await writing
  if (failure != null) {
    await rm(path, { force: true })
    throw failure
  }
  return { fields, ...(file ? { file } : {}) }
}
