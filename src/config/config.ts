// One config schema for every role. A config file (JSON), the environment and command-line flags
// resolve into it, in that order of precedence (flags win), and it is validated once, here.
import { readFileSync } from 'node:fs'
import { z } from 'zod'

const Multiaddr = z.string().regex(/^\/(ip4|ip6|dns|dns4|dns6)\//, 'a multiaddr such as /ip4/127.0.0.1/tcp/4001')
const Port = z.coerce.number().int().min(0).max(65535)

const Dollars = z.string().regex(/^\d{1,15}(\.\d{1,6})?$/, 'dollars as a decimal string, e.g. "0.10"')
const TokenPrices = z.object({ input: Dollars, output: Dollars })

export const GatewaySectionSchema = z.object({
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
    })
    .optional(),
  /** Token bucket per API key (or client address). */
  rateLimit: z.object({ capacity: z.number().int().min(1), refillPerSecond: z.number().positive() }).optional(),
})

export const NodeSectionSchema = z.object({
  models: z.array(z.object({ path: z.string().min(1), id: z.string().min(1).optional() })).default([]),
  threads: z.coerce.number().int().min(1).max(1024).optional(),
  slots: z.coerce.number().int().min(1).max(256).default(4),
  maxQueue: z.coerce.number().int().min(0).max(100_000).default(32),
  contextSize: z.coerce.number().int().min(64).optional(),
  gpu: z.enum(['auto', 'off']).default('auto'),
  payoutAddress: z.union([z.literal(''), z.string().regex(/^0x[0-9a-fA-F]{40}$/)]).default(''),
})

export const ConfigSchema = z.object({
  dataDir: z.string().min(1).default('.cluster'),
  listen: z.array(Multiaddr).optional(),
  bootstrap: z.array(Multiaddr).default([]),
  heartbeatIntervalMs: z.coerce.number().int().min(50).max(60_000).optional(),
  gateway: GatewaySectionSchema.default({ port: 8787, host: '127.0.0.1' }),
  node: NodeSectionSchema.default({ models: [], slots: 4, maxQueue: 32, gpu: 'auto', payoutAddress: '' }),
})
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
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as ConfigInput
  } catch (err) {
    throw new ConfigError(`cannot read config file ${path}: ${(err as Error).message}`)
  }
}

/** Resolves file < env < flags into one validated config. */
export function resolveConfig(layers: { file?: string; env?: NodeJS.ProcessEnv; flags?: ConfigInput }): Config {
  let merged: Plain = {}
  if (layers.file) merged = merge(merged, configFromFile(layers.file) as Plain)
  if (layers.env) merged = merge(merged, configFromEnv(layers.env) as Plain)
  if (layers.flags) merged = merge(merged, layers.flags as Plain)
  const parsed = ConfigSchema.safeParse(merged)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]
    throw new ConfigError(`invalid config at ${issue?.path.join('.') || '(root)'}: ${issue?.message}`)
  }
  return parsed.data
}

/** The gateway options a config may add: pricing, rate limits, the first admin's email. */
export function gatewayExtras(config: Config): {
  pricing?: NonNullable<Config['gateway']['pricing']>
  rateLimit?: NonNullable<Config['gateway']['rateLimit']>
  adminEmail?: string
} {
  return {
    ...(config.gateway.pricing ? { pricing: config.gateway.pricing } : {}),
    ...(config.gateway.rateLimit ? { rateLimit: config.gateway.rateLimit } : {}),
    ...(config.gateway.adminEmail ? { adminEmail: config.gateway.adminEmail } : {}),
  }
}
