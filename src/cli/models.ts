// `cluster models …`: a running gateway's Models API from the command line. Uploads and downloads
// stream between disk and the network in chunks (never a whole model in memory), with progress.
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream, createWriteStream } from 'node:fs'
import { mkdir, readFile, rename, rm, stat } from 'node:fs/promises'
import { basename, dirname, resolve } from 'node:path'
import { Readable, Transform } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import type { ReadableStream as NodeReadableStream } from 'node:stream/web'
import { Presets, SingleBar } from 'cli-progress'
import { type Command, InvalidArgumentError, Option } from 'commander'
import { z } from 'zod'
import { MODEL_CATEGORIES } from '../../protocols/models.ts'
import { httpUrl, unreachableGateway } from './errors.ts'

const DEFAULT_GATEWAY = 'http://127.0.0.1:8787'
/** Bytes read from disk per chunk of an upload. */
const UPLOAD_CHUNK_BYTES = 256 * 1024
/** For the small JSON calls. */
const REQUEST_TIMEOUT_MS = 30_000
/** The gateway asks candidate nodes in turn, up to 10 s each, before it answers a deploy. */
const DEPLOY_TIMEOUT_MS = 120_000

/** The gateway refused or failed a request: its own message, status and code. */
export class GatewayRefusedError extends Error {
  override name = 'GatewayRefusedError'
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message)
  }
}

/** Something on this side stops the command: no API key, no such file, unreachable gateway, bad checksum. */
export class ModelsCommandError extends Error {
  override name = 'ModelsCommandError'
}

// ---- the gateway's answers (only what the CLI reads; the rest passes through untouched) ----

const ErrorBody = z.object({
  error: z.union([z.string(), z.object({ message: z.string() })]),
  code: z.string().optional(),
})

const Uploaded = z.object({
  id: z.string(),
  version: z.number(),
  cid: z.string(),
  size: z.number(),
  sha256: z.string(),
  name: z.string(),
  category: z.string(),
})

const Deployment = z.object({
  nodeId: z.string(),
  version: z.number(),
  cid: z.string(),
  state: z.string(),
  progress: z.number().optional(),
  error: z.string().optional(),
})

const PublicModel = z.object({
  id: z.string(),
  name: z.string(),
  architecture: z.string(),
  quantization: z.string(),
  size: z.number(),
  version: z.number(),
  cid: z.string(),
  stats: z.object({ nodes: z.number() }),
  deployments: z.array(Deployment),
})

const PublicModels = z.object({ models: z.array(PublicModel), total: z.number() })

const Versions = z.object({
  id: z.string(),
  versions: z.array(z.object({ version: z.number(), cid: z.string(), size: z.number(), createdAt: z.string() })),
})

const Deployed = z.object({
  status: z.string(),
  nodeId: z.string(),
  model: z.string(),
  version: z.number(),
  cid: z.string(),
})

const Undeployed = z.object({
  status: z.string(),
  model: z.string(),
  nodes: z.array(z.object({ nodeId: z.string(), status: z.string(), error: z.string().optional() })),
})

const DownloadLink = z.object({
  url: z.string(),
  cid: z.string(),
  size: z.number(),
  sha256: z.string(),
  version: z.number(),
})

// ---- where the gateway is, and the key ----

interface GatewayOptions {
  gateway?: string
  apiKey?: string
}

const given = (v: string | undefined): string | undefined => (v == null || v.trim() === '' ? undefined : v.trim())

/** `.cluster/dev.json` in the working directory, as `npm start` writes it. */
async function devJson(): Promise<{ gatewayUrl?: unknown; demoApiKey?: unknown }> {
  try {
    return JSON.parse(await readFile(resolve('.cluster', 'dev.json'), 'utf8')) as Record<string, unknown>
  } catch {
    return {}
  }
}

/** A running gateway as the options, the environment, or `npm start`'s dev.json name it. */
class Gateway {
  private constructor(
    readonly base: URL,
    private readonly key: string | undefined,
  ) {}

  static async from(opts: GatewayOptions): Promise<Gateway> {
    const dev = await devJson()
    const [url, where] =
      given(opts.gateway) != null
        ? [given(opts.gateway) as string, '--gateway']
        : given(process.env.CLUSTER_GATEWAY_URL) != null
          ? [given(process.env.CLUSTER_GATEWAY_URL) as string, 'CLUSTER_GATEWAY_URL']
          : typeof dev.gatewayUrl === 'string'
            ? [dev.gatewayUrl, 'gatewayUrl in .cluster/dev.json']
            : [DEFAULT_GATEWAY, 'the default gateway']
    let base: URL
    try {
      base = httpUrl(url, where, DEFAULT_GATEWAY)
    } catch (err) {
      throw new ModelsCommandError((err as Error).message)
    }
    const key =
      given(opts.apiKey) ??
      given(process.env.CLUSTER_API_KEY) ??
      (typeof dev.demoApiKey === 'string' ? dev.demoApiKey : undefined)
    return new Gateway(base, key)
  }

  /** The Authorization header, for the calls that need an account. */
  authorization(): { authorization: string } {
    if (this.key == null) {
      throw new ModelsCommandError(
        'this needs an API key: pass --api-key, set CLUSTER_API_KEY, or run it beside .cluster/dev.json (npm start writes one)',
      )
    }
    return { authorization: `Bearer ${this.key}` }
  }

  url(path: string): URL {
    return new URL(path, this.base)
  }

  /** fetch, with a network failure turned into a sentence that names the gateway (never the key). */
  async fetch(url: URL, init: RequestInit): Promise<Response> {
    try {
      return await fetch(url, init)
    } catch (err) {
      if (err instanceof ModelsCommandError) throw err
      const e = err as Error & { cause?: { code?: string; message?: string } & Error }
      if (e.cause instanceof ModelsCommandError) throw e.cause
      throw new ModelsCommandError(unreachableGateway(url, err, 'Point --gateway or CLUSTER_GATEWAY_URL at it').message)
    }
  }

  /** One JSON call: the answer checked against `schema`, or the gateway's refusal thrown. */
  async json<S extends z.ZodType>(
    schema: S,
    method: 'GET' | 'POST',
    path: string,
    options: { body?: unknown; auth?: boolean; timeoutMs?: number } = {},
  ): Promise<{ value: z.output<S>; text: string }> {
    const headers: Record<string, string> = {
      accept: 'application/json',
      ...(options.auth ? this.authorization() : {}),
      ...(options.body !== undefined ? { 'content-type': 'application/json' } : {}),
    }
    const res = await this.fetch(this.url(path), {
      method,
      headers,
      ...(options.body !== undefined ? { body: JSON.stringify(options.body) } : {}),
      signal: AbortSignal.timeout(options.timeoutMs ?? REQUEST_TIMEOUT_MS),
    })
    return answer(res, schema)
  }
}

/** Reads a JSON answer (checked, and its text as sent, for --json), or throws the gateway's refusal. */
async function answer<S extends z.ZodType>(res: Response, schema: S): Promise<{ value: z.output<S>; text: string }> {
  const text = await res.text()
  if (!res.ok) throw refusal(res, text)
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch {
    throw new ModelsCommandError(`${res.url} answered ${res.status} with something other than JSON`)
  }
  const parsed = schema.safeParse(json)
  if (!parsed.success) {
    throw new ModelsCommandError(`${res.url} answered in an unexpected shape: ${parsed.error.issues[0]?.message}`)
  }
  return { value: parsed.data, text }
}

function refusal(res: Response, text: string): GatewayRefusedError {
  let parsed: z.output<typeof ErrorBody> | undefined
  try {
    parsed = ErrorBody.parse(JSON.parse(text))
  } catch {
    parsed = undefined
  }
  if (parsed == null) {
    return new GatewayRefusedError(res.status, 'HTTP_ERROR', `${res.status} ${res.statusText}`.trim())
  }
  const message = typeof parsed.error === 'string' ? parsed.error : parsed.error.message
  return new GatewayRefusedError(res.status, parsed.code ?? 'HTTP_ERROR', message)
}

// ---- progress on stderr: a bar on a terminal, a few plain lines elsewhere (logs, CI) ----

interface Progress {
  update(done: number): void
  stop(): void
}

function progress(label: string, total: number): Progress {
  if (process.stderr.isTTY) {
    const bar = new SingleBar(
      {
        stream: process.stderr,
        format: `${label} [{bar}] {percentage}% | {done} of {size} | {rate}/s | ETA {eta_formatted}`,
        barsize: 30,
        etaBuffer: 50,
        fps: 10,
      },
      Presets.shades_classic,
    )
    const started = Date.now()
    const payload = (done: number) => ({
      done: humanBytes(done),
      size: humanBytes(total),
      rate: humanBytes((done * 1000) / Math.max(1, Date.now() - started)),
    })
    bar.start(Math.max(total, 1), 0, payload(0))
    let stopped = false
    return {
      update: (done) => bar.update(done, payload(done)),
      stop: () => {
        if (!stopped) bar.stop()
        stopped = true
      },
    }
  }
  // Not a terminal: a line at each quarter, so a log shows it moving without a line per chunk.
  let quarter = -1
  const line = (done: number): void => {
    const q = total === 0 ? 4 : Math.floor((done / total) * 4)
    if (q <= quarter) return
    quarter = q
    const percent = total === 0 ? 100 : Math.floor((done / total) * 100)
    process.stderr.write(`${label}: ${percent}% (${humanBytes(done)} of ${humanBytes(total)})\n`)
  }
  line(0)
  return { update: line, stop: () => undefined }
}

function humanBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let value = n
  let unit = 0
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024
    unit++
  }
  return unit === 0 ? `${Math.round(value)} B` : `${value.toFixed(1)} ${units[unit]}`
}

// ---- upload ----

export interface MultipartUpload {
  contentType: string
  /** The exact byte length of the body. */
  length: number
  body: ReadableStream<Uint8Array>
}

/** A filename safe inside a quoted header parameter. */
const headerFilename = (name: string): string => name.replace(/[^\x20-\x7e]|["\\]/g, '_') || 'model.gguf'

/**
 * A multipart/form-data body of text fields and one file part named `file`, read from disk in chunks
 * as the request pulls them. Its length is known up front, so it goes with an exact Content-Length.
 */
export function multipartUpload(
  fields: Record<string, string>,
  file: { path: string; size: number; filename: string },
  onSent: (fileBytes: number) => void,
): MultipartUpload {
  const boundary = `----cluster-${randomBytes(16).toString('hex')}`
  const head = Buffer.from(
    `${Object.entries(fields)
      .map(([name, value]) => `--${boundary}\r\nContent-Disposition: form-data; name="${name}"\r\n\r\n${value}\r\n`)
      .join('')}--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="${headerFilename(
      file.filename,
    )}"\r\nContent-Type: application/octet-stream\r\n\r\n`,
  )
  const tail = Buffer.from(`\r\n--${boundary}--\r\n`)

  async function* parts(): AsyncGenerator<Uint8Array> {
    yield head
    let sent = 0
    for await (const chunk of createReadStream(file.path, {
      highWaterMark: UPLOAD_CHUNK_BYTES,
    }) as AsyncIterable<Buffer>) {
      // The declared length is a promise to the server: a file that grew is not sent past it.
      if (sent + chunk.length > file.size) break
      yield chunk
      sent += chunk.length
      onSent(sent)
    }
    if (sent !== file.size) throw new ModelsCommandError(`${file.path} changed while it was being uploaded`)
    yield tail
  }

  const source = parts()
  const body = new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const next = await source.next()
        if (next.done) controller.close()
        else controller.enqueue(next.value)
      } catch (err) {
        controller.error(err)
      }
    },
    async cancel() {
      await source.return(undefined)
    },
  })
  return {
    contentType: `multipart/form-data; boundary=${boundary}`,
    length: head.length + file.size + tail.length,
    body,
  }
}

interface AddOptions extends GatewayOptions {
  name: string
  category: string
  description?: string
  json?: boolean
}

async function add(file: string, opts: AddOptions): Promise<void> {
  const path = resolve(file)
  const info = await stat(path).catch(() => undefined)
  if (info == null || !info.isFile()) throw new ModelsCommandError(`${file}: no such file`)
  const gateway = await Gateway.from(opts)
  const auth = gateway.authorization()
  const label = `uploading ${basename(path)}`
  const bar = progress(label, info.size)
  const upload = multipartUpload(
    {
      name: opts.name,
      category: opts.category,
      ...(opts.description != null ? { description: opts.description } : {}),
    },
    { path, size: info.size, filename: basename(path) },
    (sent) => {
      bar.update(sent)
      if (sent === info.size) {
        bar.stop()
        process.stderr.write('sent; the gateway is checking it and adding it to IPFS…\n')
      }
    },
  )
  const init: RequestInit & { duplex: 'half' } = {
    method: 'POST',
    headers: { ...auth, 'content-type': upload.contentType, 'content-length': String(upload.length) },
    body: upload.body,
    // Node's fetch streams a ReadableStream body only when told it is half duplex.
    duplex: 'half',
    // Otherwise it tees the body to replay it on a redirect, and the unread branch keeps every chunk:
    // the whole file would end up in memory. With no redirects and no window it sends the one stream.
    redirect: 'error',
    window: null,
  }
  let res: Response
  try {
    res = await gateway.fetch(gateway.url('/api/models/upload'), init)
  } finally {
    bar.stop()
  }
  const { value: result, text } = await answer(res, Uploaded)
  if (opts.json) {
    process.stdout.write(`${text}\n`)
    return
  }
  process.stdout.write(
    [
      `uploaded ${result.name} as ${result.id} version ${result.version}`,
      `  id       ${result.id}`,
      `  version  ${result.version}`,
      `  cid      ${result.cid}`,
      `  size     ${humanBytes(result.size)} (${result.size} bytes)`,
      `  sha256   ${result.sha256}`,
      `deploy it with: cluster models deploy ${result.id}`,
      '',
    ].join('\n'),
  )
}

// ---- list, versions ----

/** Columns padded to their widest cell. */
function table(rows: string[][]): string {
  const widths: number[] = []
  for (const row of rows) {
    for (const [i, cell] of row.entries()) widths[i] = Math.max(widths[i] ?? 0, cell.length)
  }
  return rows
    .map((row) =>
      row
        .map((cell, i) => cell.padEnd(widths[i] ?? 0))
        .join('  ')
        .trimEnd(),
    )
    .join('\n')
}

/** Nodes serving, and how many are still on their way. */
function serving(model: z.output<typeof PublicModel>): string {
  const states = new Map<string, number>()
  for (const d of model.deployments) if (d.state !== 'ready') states.set(d.state, (states.get(d.state) ?? 0) + 1)
  const rest = [...states].map(([state, n]) => `${n} ${state}`).join(', ')
  return rest === '' ? String(model.stats.nodes) : `${model.stats.nodes} (${rest})`
}

async function list(opts: GatewayOptions & { json?: boolean }): Promise<void> {
  const gateway = await Gateway.from(opts)
  const { value, text } = await gateway.json(PublicModels, 'GET', '/api/models/public')
  if (opts.json) {
    process.stdout.write(`${text}\n`)
    return
  }
  if (value.models.length === 0) {
    process.stdout.write('no models yet: upload one with `cluster models add FILE --name NAME`\n')
    return
  }
  const rows = value.models.map((m) => [
    m.id,
    `v${m.version}`,
    humanBytes(m.size),
    `${m.architecture}/${m.quantization}`,
    serving(m),
    m.cid,
  ])
  process.stdout.write(`${table([['ID', 'VERSION', 'SIZE', 'ARCH/QUANT', 'NODES', 'CID'], ...rows])}\n`)
}

async function versions(id: string, opts: GatewayOptions & { json?: boolean }): Promise<void> {
  const gateway = await Gateway.from(opts)
  const { value, text } = await gateway.json(Versions, 'GET', `/api/models/${encodeURIComponent(id)}/versions`)
  if (opts.json) {
    process.stdout.write(`${text}\n`)
    return
  }
  const rows = value.versions.map((v) => [`v${v.version}`, humanBytes(v.size), v.createdAt, v.cid])
  process.stdout.write(`${table([['VERSION', 'SIZE', 'CREATED', 'CID'], ...rows])}\n`)
}

// ---- deploy, undeploy ----

async function deploy(id: string, opts: GatewayOptions & { version?: number; node?: string }): Promise<void> {
  const gateway = await Gateway.from(opts)
  const body = {
    ...(opts.version != null ? { version: opts.version } : {}),
    ...(opts.node != null ? { nodeId: opts.node } : {}),
  }
  const { value } = await gateway.json(Deployed, 'POST', `/api/models/${encodeURIComponent(id)}/deploy`, {
    body,
    auth: true,
    timeoutMs: DEPLOY_TIMEOUT_MS,
  })
  const where = `${value.model} version ${value.version} (${value.cid}) on node ${value.nodeId}`
  process.stdout.write(
    value.status === 'deployed'
      ? `deployed ${where}\n`
      : `deploying ${where}: the node fetches it over IPFS, then loads it (\`cluster models ls\` shows when it serves)\n`,
  )
}

async function undeploy(id: string, opts: GatewayOptions & { node?: string }): Promise<void> {
  const gateway = await Gateway.from(opts)
  const { value } = await gateway.json(Undeployed, 'POST', `/api/models/${encodeURIComponent(id)}/undeploy`, {
    body: opts.node != null ? { nodeId: opts.node } : {},
    auth: true,
    timeoutMs: DEPLOY_TIMEOUT_MS,
  })
  for (const n of value.nodes) {
    process.stdout.write(`${n.nodeId}: ${n.status}${n.error ? ` (${n.error})` : ''}\n`)
  }
  if (value.status !== 'undeployed') {
    throw new ModelsCommandError(`no node undeployed ${value.model}`)
  }
}

// ---- download ----

async function download(id: string, opts: GatewayOptions & { version?: number; out: string }): Promise<void> {
  const gateway = await Gateway.from(opts)
  const query = opts.version != null ? `?version=${opts.version}` : ''
  const { value: link } = await gateway.json(
    DownloadLink,
    'GET',
    `/api/models/${encodeURIComponent(id)}/download${query}`,
  )
  const out = resolve(opts.out)
  const partial = `${out}.partial`
  const res = await gateway.fetch(new URL(link.url), { method: 'GET' })
  if (!res.ok || res.body == null) throw refusal(res, await res.text())
  // As `model synth --out` does: the folder is made if it is not there.
  try {
    await mkdir(dirname(out), { recursive: true })
  } catch (err) {
    await res.body.cancel()
    throw new ModelsCommandError(
      `--out: cannot make the folder ${dirname(out)} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`,
    )
  }
  const bar = progress(`downloading ${id} v${link.version}`, link.size)
  const hash = createHash('sha256')
  let received = 0
  const meter = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      hash.update(chunk)
      received += chunk.length
      bar.update(received)
      done(null, chunk)
    },
  })
  try {
    await pipeline(Readable.fromWeb(res.body as NodeReadableStream<Uint8Array>), meter, createWriteStream(partial))
  } catch (err) {
    await rm(partial, { force: true })
    throw new ModelsCommandError(`the download stopped after ${received} bytes: ${(err as Error).message}`)
  } finally {
    bar.stop()
  }
  const sha256 = hash.digest('hex')
  if (received !== link.size || sha256 !== link.sha256) {
    await rm(partial, { force: true })
    throw new ModelsCommandError(
      `the download does not match the model: ${received} bytes with sha256 ${sha256}, the gateway said ${link.size} bytes with sha256 ${link.sha256}; nothing was kept`,
    )
  }
  await rename(partial, out)
  process.stdout.write(
    `wrote ${out} (${id} version ${link.version}, ${humanBytes(received)}, sha256 ${sha256} verified)\n`,
  )
}

// ---- the command group ----

const positiveInt = (value: string): number => {
  const n = Number(value)
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('give a positive whole number')
  return n
}

/** Runs one subcommand: a refusal or a local problem is one line on stderr and exit code 1. */
function action<A extends unknown[]>(
  sub: string,
  run: (...args: A) => Promise<void>,
): (...args: [...A, Command]) => Promise<void> {
  return async (...args) => {
    try {
      await run(...(args.slice(0, -1) as A))
    } catch (err) {
      if (err instanceof GatewayRefusedError) {
        process.stderr.write(`cluster models ${sub}: ${err.message} (${err.status} ${err.code})\n`)
      } else if (err instanceof ModelsCommandError) {
        process.stderr.write(`cluster models ${sub}: ${err.message}\n`)
      } else throw err
      process.exitCode = 1
    }
  }
}

/** The options every subcommand takes: where the gateway is, and the key. */
function withGateway(cmd: Command): Command {
  return cmd
    .option(
      '--gateway <url>',
      `the gateway (default: env CLUSTER_GATEWAY_URL, else .cluster/dev.json, else ${DEFAULT_GATEWAY})`,
    )
    .option('--api-key <key>', 'your API key (default: env CLUSTER_API_KEY, else demoApiKey of .cluster/dev.json)')
}

/** Adds `cluster models add|ls|versions|deploy|undeploy|download`. */
export function registerModels(program: Command): void {
  // `--version N` below is a model version; without this the program's own --version (print the
  // CLI's version) would claim it after the subcommand too. Program options go before subcommands.
  program.enablePositionalOptions()
  const models = program.command('models').description('models on a running gateway: upload, list, deploy, download')

  withGateway(
    models
      .command('add')
      .description('upload a GGUF model (a new version when the name exists); prints its id, version and CID')
      .argument('<file>', 'the .gguf file')
      .requiredOption('--name <name>', 'its name (the id is derived from it)')
      .addOption(new Option('--category <category>', 'what it is for').choices(MODEL_CATEGORIES).default('chat'))
      .option('--description <text>', 'a description shown in the model list')
      .option('--json', "print the gateway's answer as JSON"),
  ).action(action('add', (file: string, opts: AddOptions) => add(file, opts)))

  withGateway(
    models
      .command('ls')
      .alias('list')
      .description('the public models: version, size, shape, nodes serving, CID')
      .option('--json', "print the gateway's answer as JSON"),
  ).action(action('ls', (opts: GatewayOptions & { json?: boolean }) => list(opts)))

  withGateway(
    models
      .command('versions')
      .description("a model's versions, newest first")
      .argument('<id>', 'the model id')
      .option('--json', "print the gateway's answer as JSON"),
  ).action(action('versions', (id: string, opts: GatewayOptions & { json?: boolean }) => versions(id, opts)))

  withGateway(
    models
      .command('deploy')
      .description('have a node fetch the model over IPFS and serve it')
      .argument('<id>', 'the model id')
      .option('--version <n>', 'which version (default: the latest)', positiveInt)
      .option('--node <peer-id>', 'which node (default: the one with the most free memory)'),
  ).action(
    action('deploy', (id: string, opts: GatewayOptions & { version?: number; node?: string }) => deploy(id, opts)),
  )

  withGateway(
    models
      .command('undeploy')
      .description('stop serving the model (its owner or an admin)')
      .argument('<id>', 'the model id')
      .option('--node <peer-id>', 'only on this node (default: everywhere)'),
  ).action(action('undeploy', (id: string, opts: GatewayOptions & { node?: string }) => undeploy(id, opts)))

  withGateway(
    models
      .command('download')
      .description("download the weights through a signed URL and check them against the model's sha256")
      .argument('<id>', 'the model id')
      .requiredOption('--out <file>', 'where to write the .gguf')
      .option('--version <n>', 'which version (default: the latest)', positiveInt),
  ).action(
    action('download', (id: string, opts: GatewayOptions & { version?: number; out: string }) => download(id, opts)),
  )
}
