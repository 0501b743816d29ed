// One enabled external provider at run time: its base URL, key and models, and a keep-alive
// connection pool to its origin (undici). Requests go only to `<base URL><endpoint path>` with our
// own headers: the caller's headers, a URL from the request or a redirect can never carry the key
// anywhere else (undici's request() does not follow redirects).
import type { Readable } from 'node:stream'
import { Pool } from 'undici'
import { parseUsd, type TokenPrice } from '../../src/payments/money.ts'
import {
  baseUrlEnv,
  ENDPOINT_PATHS,
  type Endpoint,
  isProviderName,
  PROVIDER_NAMES,
  PROVIDERS,
  type ProviderName,
} from './catalog.ts'

export interface ProviderConfig {
  /** The key (else from the provider's env variable, e.g. VENICE_API_KEY). */
  apiKey?: string | undefined
  /** Base URL (else CLUSTER_PROVIDER_<NAME>_BASE_URL, else the catalog's). */
  baseUrl?: string | undefined
  /** More model slugs (ours → the provider's), added to the catalog's. */
  models?: Record<string, string> | undefined
  /** Dollars per million tokens the provider charges (for scoring). */
  price?: { input: string; output: string } | undefined
  /** Off even with a key. @default true */
  enabled?: boolean | undefined
}

export type ProvidersConfig = Partial<Record<ProviderName, ProviderConfig>>

export interface UpstreamTimeouts {
  /** Time to connect. @default 5000 */
  connectMs?: number
  /** Time from sending the request to the response's headers. @default 120000 */
  headersMs?: number
  /** Longest silence while the body streams. @default 120000 */
  bodyMs?: number
}

export interface UpstreamResponse {
  status: number
  headers: Record<string, string | string[] | undefined>
  body: Readable & { text(): Promise<string>; json(): Promise<unknown>; arrayBuffer(): Promise<ArrayBuffer> }
}

export interface UpstreamRequest {
  body: string | Buffer | Readable
  contentType: string
  /** For audio: what the client accepts. */
  accept?: string
  signal?: AbortSignal
}

export class Provider {
  readonly name: ProviderName
  readonly endpoints: ReadonlySet<Endpoint>
  readonly extraFields: ReadonlySet<string>
  readonly price: TokenPrice
  private readonly models: ReadonlyMap<string, string>
  private readonly basePath: string
  private readonly origin: string
  private readonly pool: Pool
  readonly #authorization: string

  constructor(name: ProviderName, apiKey: string, baseUrl: string, config: ProviderConfig, timeouts: UpstreamTimeouts) {
    const spec = PROVIDERS[name]
    const url = new URL(baseUrl)
    if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new Error(`${name}: base URL must be http(s)`)
    if (url.username || url.password || url.search || url.hash) {
      throw new Error(`${name}: base URL must not carry credentials, a query or a fragment`)
    }
    this.name = name
    this.endpoints = new Set(spec.endpoints)
    this.extraFields = new Set(spec.extraFields ?? [])
    const price = config.price ?? spec.price ?? { input: '0', output: '0' }
    this.price = { inputPerMillion: parseUsd(price.input), outputPerMillion: parseUsd(price.output) }
    this.models = new Map(Object.entries({ ...spec.models, ...config.models }))
    this.origin = url.origin
    this.basePath = url.pathname.replace(/\/+$/, '')
    this.#authorization = `Bearer ${apiKey}`
    this.pool = new Pool(this.origin, {
      connections: 256,
      pipelining: 1,
      keepAliveTimeout: 30_000,
      connect: { timeout: timeouts.connectMs ?? 5_000 },
      headersTimeout: timeouts.headersMs ?? 120_000,
      bodyTimeout: timeouts.bodyMs ?? 120_000,
    })
  }

  /** Where it sends requests (no key): for logs and the route header. */
  get baseUrl(): string {
    return `${this.origin}${this.basePath}`
  }

  /** Whether auto routing may send `model` here: the provider lists it. */
  lists(model: string): boolean {
    return this.models.has(model)
  }

  /** The provider's id for `model`: its mapping, or (pinned) the id as given. */
  upstreamModel(model: string, pinned: boolean): string | undefined {
    return this.models.get(model) ?? (pinned ? model : undefined)
  }

  /** Our slugs it lists. */
  modelIds(): string[] {
    return [...this.models.keys()]
  }

  /** Sends one request to an endpoint; rejects on connection errors, timeouts and aborts. */
  async send(endpoint: Endpoint, req: UpstreamRequest): Promise<UpstreamResponse> {
    const res = await this.pool.request({
      origin: this.origin,
      path: `${this.basePath}${ENDPOINT_PATHS[endpoint]}`,
      method: 'POST',
      headers: {
        authorization: this.#authorization,
        'content-type': req.contentType,
        accept: req.accept ?? (req.contentType === 'application/json' ? 'application/json, text/event-stream' : '*/*'),
        'user-agent': 'cluster-gateway',
      },
      body: req.body,
      ...(req.signal ? { signal: req.signal } : {}),
    })
    return { status: res.statusCode, headers: res.headers, body: res.body }
  }

  /** Whether a string contains this provider's key (tests and log checks use it). */
  holdsKey(text: string): boolean {
    return text.includes(this.#authorization.slice('Bearer '.length))
  }

  close(): Promise<void> {
    return this.pool.close()
  }
}

/** The providers enabled by a key (config, else env), in the catalog's order. */
export function enabledProviders(
  config: ProvidersConfig = {},
  env: NodeJS.ProcessEnv = process.env,
  timeouts: UpstreamTimeouts = {},
): Provider[] {
  for (const name of Object.keys(config)) {
    if (!isProviderName(name)) {
      throw new Error(`unknown provider '${name}' in the config (known: ${PROVIDER_NAMES.join(', ')})`)
    }
  }
  const out: Provider[] = []
  for (const name of PROVIDER_NAMES) {
    const c = config[name] ?? {}
    if (c.enabled === false) continue
    const key = c.apiKey ?? env[PROVIDERS[name].keyEnv]
    if (key == null || key.trim() === '') continue
    const baseUrl = c.baseUrl ?? env[baseUrlEnv(name)] ?? PROVIDERS[name].baseUrl
    out.push(new Provider(name, key.trim(), baseUrl, c, timeouts))
  }
  return out
}
