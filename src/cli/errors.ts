// How the `cluster` command reports a problem the user can fix: one line, "cluster: …", no stack,
// exit code 2 for bad input (1 for a failure of something it talked to). bin/cluster.js prints it.

/** Bad input or a local problem: printed as one line, without a stack. */
export class UserError extends Error {
  override name = 'UserError'
  constructor(
    message: string,
    readonly exitCode = 2,
  ) {
    super(message)
  }
}

/** The causes of an error, itself first. */
function* causes(err: unknown): Generator<Error & { code?: unknown; shortMessage?: unknown }> {
  const seen = new Set<unknown>()
  let e: unknown = err
  while (e instanceof Error && !seen.has(e)) {
    seen.add(e)
    yield e
    e = (e as { cause?: unknown }).cause
  }
}

/** LevelDB refused to open because another process holds its LOCK: another instance uses the data dir. */
export function isDataDirLocked(err: unknown): boolean {
  for (const e of causes(err)) {
    if (e.code === 'LEVEL_LOCKED') return true
    if (/\bLOCK: (already held|Resource temporarily unavailable)/.test(e.message)) return true
  }
  return false
}

/** What to say when isDataDirLocked. */
export const dataDirInUse = (dataDir: string): UserError =>
  new UserError(`the data dir ${dataDir} is in use by another running instance: stop it, or give another --data-dir`)

/** A LevelDB that failed to open, for any reason (the lock, most often). */
export function isDatabaseOpenFailure(err: unknown): boolean {
  for (const e of causes(err)) {
    if (e.code === 'LEVEL_DATABASE_NOT_OPEN' || e.code === 'ERR_OPEN_FAILED') return true
    if (/Database failed to open/.test(e.message)) return true
  }
  return false
}

/** `--flag`'s value as an http(s) URL, or a UserError naming the flag. */
export function httpUrl(value: string, where: string, example = 'http://127.0.0.1:8787'): URL {
  let url: URL
  try {
    url = new URL(value)
  } catch {
    throw new UserError(`${where}: not a URL: ${value} (give one like ${example})`)
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new UserError(`${where}: not an http(s) URL: ${value} (give one like ${example})`)
  }
  return url
}

/** The one-line reason a fetch failed (ECONNREFUSED, ENOTFOUND, …; a timeout is said by unreachableGateway). */
export function networkReason(err: unknown): string {
  const e = err as Error & { cause?: { code?: string; message?: string } }
  return e.cause?.code ?? e.cause?.message ?? e.message
}

/** The gateway at `url` could not be reached: what to say. */
export function unreachableGateway(url: URL, err: unknown, hint = 'Point --gateway at it'): UserError {
  if ((err as Error).name === 'TimeoutError') return new UserError(`${url.origin} did not answer in time`, 1)
  return new UserError(`cannot reach the gateway at ${url.origin} (${networkReason(err)}): is it running? ${hint}`, 1)
}

/** The message of any error, on one line: viem's short message rather than its many-line dump. */
export function oneLine(err: unknown): string {
  const e = err as { shortMessage?: unknown; message?: unknown }
  const text =
    typeof e?.shortMessage === 'string' && e.shortMessage !== ''
      ? e.shortMessage
      : typeof e?.message === 'string'
        ? e.message
        : String(err)
  return text.split('\n').find((line) => line.trim() !== '') ?? text
}
