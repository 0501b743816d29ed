// One config schema for every role. A config file (JSON), the environment and command-line flags
// resolve into it, in that order of precedence (flags win), and it is validated once, here.
import { readFileSync } from 'node:fs'
import { z } from 'zod'
import { isPublicUrl } from './public-url.ts'

const Multiaddr = z.string().regex(/^\/(ip4|ip6|dns|dns4|dns6)\//, 'a multiaddr such as /ip4/127.0.0.1/tcp/4001')
const Port = z.coerce.number().int().min(0).max(65535)

const Dollars = z.string().regex(/^\d{1,15}(\.\d{1,6})?$/, 'dollars as a decimal string, e.g. "0.10"')
const TokenPrices = z.object({ input: Dollars, output: Dollars }).strict()

export const GatewaySectionSchema = z
  .object({
    port: Port.default(8787),
    host: z.string().default('127.0.0.1'),
    /** Email of the admin account created on an empty data dir. */
    adminEmail: z.email().optional(),
    /** Dollars per million tokens; x402 dollars per request by endpoint path. */
    pricing: z
      .object({
        default: TokenPrices.optional(),
        models: z.record(z.string(), TokenPrices).optional(),
        x402: z.record(z.string(), Dollars).optional(),
        /** Dollars per image, per transcription, per 1,000 characters of speech (API keys). */
        units: z
          .object({
            image: Dollars.optional(),
            transcription: Dollars.optional(),
            speechPer1kChars: Dollars.optional(),
          })
          .strict()
          .optional(),
      })
      .strict()
      .optional(),
    /**
     * External providers, by name (venice, groq, together, fireworks, deepinfra, sambanova, phala,
     * redpill, openrouter). Keys are best left to the env (VENICE_API_KEY, …); base URLs to
     * CLUSTER_PROVIDER_<NAME>_BASE_URL. A provider is enabled when it has a key.
     */
    providers: z
      .record(
        z.string().regex(/^[a-z]+$/, 'a provider name'),
        z
          .object({
            apiKey: z.string().min(1).optional(),
            baseUrl: z.url({ protocol: /^https?$/ }).optional(),
            models: z.record(z.string().min(1), z.string().min(1)).optional(),
            price: TokenPrices.optional(),
            enabled: z.boolean().optional(),
          })
          .strict(),
      )
      .optional(),
    /** Routing: price weight (ms of score per $/M output tokens) and cool-down of failed candidates. */
    routing: z
      .object({
        priceWeightMs: z.number().min(0).optional(),
        cooldownBaseMs: z.number().int().min(0).optional(),
        cooldownMaxMs: z.number().int().min(0).optional(),
      })
      .strict()
      .optional(),
    /**
     * The gateway's public URL when clients reach it through a proxy (e.g. https://api.example.com):
     * model download links, the x402 resource and the wallet-link message use it.
     */
    publicUrl: z.string().refine(isPublicUrl, 'an http(s) origin only, like https://api.example.com').optional(),
    /** Token bucket per API key (or client address). */
    rateLimit: z
      .object({ capacity: z.number().int().min(1), refillPerSecond: z.number().positive() })
      .strict()
      .optional(),
    /** Sign-ups: a bucket per client address (IPv6: per /64) and one for all of them. */
    registrationLimit: z
      .object({
        perAddress: z
          .object({ capacity: z.number().int().min(1), refillPerSecond: z.number().positive() })
          .strict()
          .optional(),
        global: z
          .object({ capacity: z.number().int().min(1), refillPerSecond: z.number().positive() })
          .strict()
          .optional(),
      })
      .strict()
      .optional(),
    /** Password hashes (scrypt, 32 MiB each) running at once, and logins that may wait for one. */
    passwordHashing: z
      .object({
        maxConcurrent: z.number().int().min(1).max(64),
        maxQueuedChecks: z.number().int().min(0),
        maxQueuedHashes: z.number().int().min(0),
      })
      .partial()
      .strict()
      .optional(),
    /** Who may read GET /metrics: loopback or an admin key (default), an admin key only, or anyone. */
    metricsAccess: z.enum(['loopback-or-admin', 'admin', 'public']).optional(),
    /** Model uploads: the largest file accepted (bytes), and how long a download URL stays valid (s). */
    models: z
      .object({
        maxUploadBytes: z.number().int().min(1).optional(),
        downloadTtlSeconds: z
          .number()
          .int()
          .min(1)
          .max(7 * 24 * 3600)
          .optional(),
      })
      .strict()
      .optional(),
  })
  .strict()

export const NodeSectionSchema = z
  .object({
    models: z.array(z.object({ path: z.string().min(1), id: z.string().min(1).optional() }).strict()).default([]),
    threads: z.coerce.number().int().min(1).max(1024).optional(),
    slots: z.coerce.number().int().min(1).max(256).default(4),
    maxQueue: z.coerce.number().int().min(0).max(100_000).default(32),
    /** A request that could not start within this long is refused as busy, at once when that is foreseen. */
    maxQueueWaitMs: z.coerce.number().int().min(0).max(3_600_000).optional(),
    contextSize: z.coerce.number().int().min(64).optional(),
    gpu: z.enum(['auto', 'off']).default('auto'),
    payoutAddress: z.union([z.literal(''), z.string().regex(/^0x[0-9a-fA-F]{40}$/)]).default(''),
    /** Take deploy requests from gateways. */
    acceptDeploys: z.boolean().default(true),
    /**
     * Peer ids of gateways whose deploy and undeploy requests are taken, beside the bootstrap peers
     * (their /p2p/ ids, the peerId of a peer.json); other peers are refused.
     */
    trustedGateways: z.array(z.string().regex(/^[A-Za-z0-9]{32,128}$/, 'a peer id')).default([]),
    /** Bytes offered for model weights. @default all VRAM, else three quarters of RAM */
    modelMemoryBytes: z.number().int().min(0).optional(),
    /** Serve Prometheus /metrics on 127.0.0.1 at this port (0: any free one); off when absent. */
    metricsPort: z.coerce.number().int().min(0).max(65535).optional(),
    /**
     * Models served by an OpenAI-compatible server the operator runs (vLLM, llama-server, Ollama, …).
     * Its key, if it needs one, comes from CLUSTER_UPSTREAM_API_KEY.
     */
    upstreams: z
      .array(
        z
          .object({
            baseUrl: z.url({ protocol: /^https?$/ }),
            model: z.string().min(1),
            id: z.string().min(1).optional(),
            contextSize: z.number().int().min(64).optional(),
            slots: z.number().int().min(1).max(1024).optional(),
          })
          .strict(),
      )
      .default([]),
  })
  .strict()

const EvmAddress = z.string().regex(/^0x[0-9a-fA-F]{40}$/, 'an EVM address, 0x and 40 hex digits')

/** Chains with a known USDC: naming one fills chainId and usdc. */
export const KNOWN_NETWORKS = {
  base: { chainId: 8453, usdc: '0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913' },
  'base-sepolia': { chainId: 84532, usdc: '0x036CbD53842c5426634e7929541eC2318f3dCF7e' },
} as const

/**
 * The escrow the gateway settles against. The gateway's signing key is never in the config: it
 * comes from CLUSTER_GATEWAY_KEY or the file `signerKeyFile` names (0x + 64 hex digits).
 */
export const ChainSectionSchema = z
  .object({
    /** base | base-sepolia | local, or as CAIP-2: eip155:8453 | eip155:84532. */
    network: z
      .preprocess(
        (v) => (v === 'eip155:8453' ? 'base' : v === 'eip155:84532' ? 'base-sepolia' : v),
        z.enum(['base', 'base-sepolia', 'local']),
      )
      .default('local'),
    rpcUrl: z.url({ protocol: /^https?$/ }),
    chainId: z.coerce.number().int().positive().optional(),
    usdc: EvmAddress.optional(),
    escrow: EvmAddress,
    /** Block the escrow was deployed in: where the deposit watcher starts. @default 0 */
    fromBlock: z.coerce.number().int().min(0).default(0),
    /** Blocks a deposit waits before it is credited. @default 2 (0 on a local chain) */
    confirmations: z.coerce.number().int().min(0).max(1000).optional(),
    pollIntervalMs: z.coerce.number().int().min(50).max(600_000).default(2_000),
    settleIntervalMs: z.coerce.number().int().min(100).max(86_400_000).default(60_000),
    signerKeyFile: z.string().min(1).optional(),
    /** Receives what nodes without a payout address earned. @default the signer's address */
    payoutAddress: EvmAddress.optional(),
  })
  .strict()
  .transform((c, ctx) => {
    const known = c.network === 'local' ? undefined : KNOWN_NETWORKS[c.network]
    const chainId = c.chainId ?? known?.chainId
    const usdc = c.usdc ?? known?.usdc
    if (chainId == null) ctx.addIssue({ code: 'custom', path: ['chainId'], message: 'required for this network' })
    if (usdc == null) ctx.addIssue({ code: 'custom', path: ['usdc'], message: 'required for this network' })
    if (known != null && chainId !== known.chainId)
      ctx.addIssue({ code: 'custom', path: ['chainId'], message: `${c.network} is chain ${known.chainId}` })
    return {
      ...c,
      chainId: chainId ?? 0,
      usdc: usdc ?? '',
      confirmations: c.confirmations ?? (c.network === 'local' ? 0 : 2),
    }
  })
export type ChainSection = z.output<typeof ChainSectionSchema>

/**
 * x402 on the gateway (needs the chain section: the network is its chain, the asset its USDC). The
 * facilitator is a remote one (`facilitatorUrl`), or embedded: in-process, paying gas with the key
 * in CLUSTER_FACILITATOR_KEY or `facilitatorKeyFile`.
 */
export const X402SectionSchema = z
  .object({
    facilitatorUrl: z.url({ protocol: /^https?$/ }).optional(),
    facilitatorKeyFile: z.string().min(1).optional(),
    /** Receives the payments. @default the chain section's payoutAddress, else the gateway's address */
    payTo: EvmAddress.optional(),
    /** The token's EIP-712 domain. @default USD Coin / 2 (USDC on Base) */
    assetName: z.string().min(1).default('USD Coin'),
    assetVersion: z.string().min(1).default('2'),
    maxTimeoutSeconds: z.coerce.number().int().min(10).max(3600).default(60),
    settleTimeoutMs: z.coerce.number().int().min(100).max(600_000).default(30_000),
  })
  .strict()

export const ConfigSchema = z
  .object({
    dataDir: z.string().min(1).default('.cluster'),
    listen: z.array(Multiaddr).optional(),
    bootstrap: z.array(Multiaddr).default([]),
    heartbeatIntervalMs: z.coerce.number().int().min(50).max(60_000).optional(),
    /** JSON log lines at this level and above (stderr). @default CLUSTER_LOG_LEVEL, else info */
    logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).optional(),
    gateway: GatewaySectionSchema.default({ port: 8787, host: '127.0.0.1' }),
    node: NodeSectionSchema.default({
      models: [],
      slots: 4,
      maxQueue: 32,
      gpu: 'auto',
      payoutAddress: '',
      acceptDeploys: true,
      trustedGateways: [],
      upstreams: [],
    }),
    /** On-chain settlement (the gateway): off when absent. */
    chain: ChainSectionSchema.optional(),
    /** Pay per request with x402 (the gateway): off when absent. */
    x402: X402SectionSchema.optional(),
  })
  .strict()
export type Config = z.infer<typeof ConfigSchema>
export type ConfigInput = z.input<typeof ConfigSchema>

export class ConfigError extends Error {
  override name = 'ConfigError'
}

type Plain = Record<string, unknown>

function merge(base: Plain, over: Plain): Plain {
  const out: Plain = { ...base }
  for (const [k, v] of Object.entries(over)) {
    if (v === undefined) continue
    const prev = out[k]
    out[k] =
      v !== null &&
      typeof v === 'object' &&
      !Array.isArray(v) &&
      prev !== null &&
      typeof prev === 'object' &&
      !Array.isArray(prev)
        ? merge(prev as Plain, v as Plain)
        : v
  }
  return out
}

/** The config the environment sets: CLUSTER_DATA_DIR, PORT, CLUSTER_BOOTSTRAP (comma-separated), CLUSTER_THREADS. */
export function configFromEnv(env: NodeJS.ProcessEnv): ConfigInput {
  const out: Plain = {}
  if (env.CLUSTER_DATA_DIR) out.dataDir = env.CLUSTER_DATA_DIR
  if (env.CLUSTER_BOOTSTRAP)
    out.bootstrap = env.CLUSTER_BOOTSTRAP.split(',')
      .map((s) => s.trim())
      .filter(Boolean)
  if (env.PORT) out.gateway = { port: env.PORT }
  if (env.CLUSTER_THREADS) out.node = { threads: env.CLUSTER_THREADS }
  return out as ConfigInput
}

export function configFromFile(path: string): ConfigInput {
  let json: unknown
  try {
    json = JSON.parse(readFileSync(path, 'utf8'))
  } catch (err) {
    throw new ConfigError(`cannot read config file ${path}: ${(err as Error).message.replace(/\s+/g, ' ')}`)
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw new ConfigError(`config file ${path}: not a JSON object ({ … })`)
  }
  return json as ConfigInput
}

/** Resolves file < env < flags into one validated config. */
export function resolveConfig(layers: { file?: string; env?: NodeJS.ProcessEnv; flags?: ConfigInput }): Config {
  let merged: Plain = {}
  if (layers.file) merged = merge(merged, configFromFile(layers.file) as Plain)
  if (layers.env) merged = merge(merged, configFromEnv(layers.env) as Plain)
  if (layers.flags) merged = merge(merged, layers.flags as Plain)
  const parsed = ConfigSchema.safeParse(merged)
  if (!parsed.success) {
    // Every object of the schema is strict: a misspelt key is an error, never silently ignored.
    const keys = parsed.error.issues.flatMap((i) =>
      i.code === 'unrecognized_keys' ? i.keys.map((k) => [...i.path, k].join('.')) : [],
    )
    if (keys.length > 0) {
      throw new ConfigError(
        `config: unknown key${keys.length > 1 ? 's' : ''} ${keys.join(', ')}${layers.file ? ` (in ${layers.file})` : ''}`,
      )
    }
    const issue = parsed.error.issues[0]
    throw new ConfigError(`invalid config at ${issue?.path.join('.') || '(root)'}: ${issue?.message}`)
  }
  return parsed.data
}

/** The gateway options a config may add: pricing, rate limits, the first admin's email, model limits. */
export function gatewayExtras(config: Config): {
  pricing?: NonNullable<Config['gateway']['pricing']>
  rateLimit?: NonNullable<Config['gateway']['rateLimit']>
  registrationLimit?: NonNullable<Config['gateway']['registrationLimit']>
  passwordHashing?: NonNullable<Config['gateway']['passwordHashing']>
  adminEmail?: string
  publicUrl?: string
  models?: NonNullable<Config['gateway']['models']>
  metricsAccess?: NonNullable<Config['gateway']['metricsAccess']>
  providers?: NonNullable<Config['gateway']['providers']>
  routing?: NonNullable<Config['gateway']['routing']>
} {
  return {
    ...(config.gateway.providers ? { providers: config.gateway.providers } : {}),
    ...(config.gateway.routing ? { routing: config.gateway.routing } : {}),
    ...(config.gateway.metricsAccess ? { metricsAccess: config.gateway.metricsAccess } : {}),
    ...(config.gateway.models ? { models: config.gateway.models } : {}),
    ...(config.gateway.pricing ? { pricing: config.gateway.pricing } : {}),
    ...(config.gateway.rateLimit ? { rateLimit: config.gateway.rateLimit } : {}),
    ...(config.gateway.registrationLimit ? { registrationLimit: config.gateway.registrationLimit } : {}),
    ...(config.gateway.passwordHashing ? { passwordHashing: config.gateway.passwordHashing } : {}),
    ...(config.gateway.adminEmail ? { adminEmail: config.gateway.adminEmail } : {}),
    ...(config.gateway.publicUrl ? { publicUrl: config.gateway.publicUrl } : {}),
  }
}
