// The external providers a gateway can route to: each an OpenAI-compatible HTTP API with its base
// URL, the env variable its key comes from, the endpoints it offers, and the models it lists (our
// slug → its own). An operator enables one by setting its key; nothing in a request can change
// where a provider's key is sent.

import type { EndpointName } from '../../protocols/index.ts'

/** The inference endpoints of the API, by the name routing, events and pricing use. */
export type Endpoint = EndpointName

export const ENDPOINT_PATHS: Record<Endpoint, string> = {
  chat: '/chat/completions',
  embeddings: '/embeddings',
  rerank: '/rerank',
  images: '/images/generations',
  transcriptions: '/audio/transcriptions',
  speech: '/audio/speech',
}

/** The mesh's own name for `provider`: pins a request to mesh nodes ("provider": "cluster"). */
export const MESH_PROVIDER = 'cluster'

export interface ProviderSpec {
  name: ProviderName
  label: string
  /** Base URL up to and including the API version, e.g. https://api.venice.ai/api/v1 */
  baseUrl: string
  /** The env variable holding the operator's key. */
  keyEnv: string
  endpoints: readonly Endpoint[]
  /** Our model slug → the provider's; a pinned request may also name any of the provider's own ids. */
  models: Readonly<Record<string, string>>
  /** Fields of a request that only this provider understands, passed through to it (dropped for others). */
  extraFields?: readonly string[]
  /** Dollars per million tokens (input, output) the provider charges, for scoring; per model or default. */
  price?: { input: string; output: string }
}

export const PROVIDER_NAMES = [
  'venice',
  'groq',
  'together',
  'fireworks',
  'deepinfra',
  'sambanova',
  'phala',
  'redpill',
  'openrouter',
] as const
export type ProviderName = (typeof PROVIDER_NAMES)[number]

/** Venice's own ids from its page (usable as they are with "provider": "venice"). */
const VENICE_IDS = [
  'llama-3.2-3b',
  'llama-3.3-70b',
  'hermes-3-llama-3.1-405b',
  'deepseek-v3.2',
  'qwen3-235b-a22b-instruct-2507',
  'qwen3-5-35b-a3b',
  'qwen3-5-397b-a17b',
  'qwen3-5-9b',
  'qwen3-next-80b',
  'mistral-small-3-2-24b-instruct',
  'google-gemma-3-27b-it',
  'google-gemma-4-31b-it',
  'openai-gpt-oss-120b',
  'venice-uncensored-1-2',
  'zai-org-glm-4.7',
  'fluently-xl',
  'text-embedding-bge-m3',
  'tts-kokoro',
]

const identity = (ids: string[]): Record<string, string> => Object.fromEntries(ids.map((id) => [id, id]))

export const PROVIDERS: Readonly<Record<ProviderName, ProviderSpec>> = {
  venice: {
    name: 'venice',
    label: 'Venice AI',
    baseUrl: 'https://api.venice.ai/api/v1',
    keyEnv: 'VENICE_API_KEY',
    endpoints: ['chat', 'embeddings', 'images', 'speech', 'transcriptions'],
    models: {
      ...identity(VENICE_IDS),
      // The docs' slugs (cluster-api-docs "Venice Models") → Venice's ids.
      'llama-3.3-70b-instruct': 'llama-3.3-70b',
      'qwen3.5-35b-a3b': 'qwen3-5-35b-a3b',
      'qwen3.5-397b-a17b': 'qwen3-5-397b-a17b',
      'mistral-small-3.2-24b': 'mistral-small-3-2-24b-instruct',
      'gemma-4-31b-it': 'google-gemma-4-31b-it',
      'llama-3.2-3b-instruct': 'llama-3.2-3b',
    },
    extraFields: ['venice_parameters'],
    price: { input: '0.70', output: '2.80' },
  },
  groq: {
    name: 'groq',
    label: 'Groq',
    baseUrl: 'https://api.groq.com/openai/v1',
    keyEnv: 'GROQ_API_KEY',
    endpoints: ['chat', 'transcriptions', 'speech'],
    models: {
      'llama-3.3-70b-instruct': 'llama-3.3-70b-versatile',
      'llama-3.1-8b-instruct': 'llama-3.1-8b-instant',
      'gpt-oss-120b': 'openai/gpt-oss-120b',
      'whisper-large-v3': 'whisper-large-v3',
      'whisper-large-v3-turbo': 'whisper-large-v3-turbo',
    },
    price: { input: '0.59', output: '0.79' },
  },
  together: {
    name: 'together',
    label: 'Together AI',
    baseUrl: 'https://api.together.xyz/v1',
    keyEnv: 'TOGETHER_API_KEY',
    endpoints: ['chat', 'embeddings', 'rerank', 'images', 'transcriptions', 'speech'],
    models: {
      'llama-3.3-70b-instruct': 'meta-llama/Llama-3.3-70B-Instruct-Turbo',
      'llama-3.1-8b-instruct': 'meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo',
      'llama-3.1-70b': 'meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo',
      'llama-3.1-70b-instruct': 'meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo',
      'deepseek-v3.2': 'deepseek-ai/DeepSeek-V3.2',
      'gpt-oss-120b': 'openai/gpt-oss-120b',
      'bge-base-en-v1.5': 'BAAI/bge-base-en-v1.5',
      'bge-reranker-v2-m3': 'BAAI/bge-reranker-v2-m3',
      'flux-schnell': 'black-forest-labs/FLUX.1-schnell',
      'whisper-large-v3': 'openai/whisper-large-v3',
    },
    price: { input: '0.88', output: '0.88' },
  },
  fireworks: {
    name: 'fireworks',
    label: 'Fireworks AI',
    baseUrl: 'https://api.fireworks.ai/inference/v1',
    keyEnv: 'FIREWORKS_API_KEY',
    endpoints: ['chat', 'embeddings'],
    models: {
      'llama-3.3-70b-instruct': 'accounts/fireworks/models/llama-v3p3-70b-instruct',
      'llama-3.1-8b-instruct': 'accounts/fireworks/models/llama-v3p1-8b-instruct',
      'llama-3.1-70b': 'accounts/fireworks/models/llama-v3p1-70b-instruct',
      'llama-3.1-70b-instruct': 'accounts/fireworks/models/llama-v3p1-70b-instruct',
      'deepseek-v3.2': 'accounts/fireworks/models/deepseek-v3p2',
      'gpt-oss-120b': 'accounts/fireworks/models/gpt-oss-120b',
      'nomic-embed-text-v1.5': 'nomic-ai/nomic-embed-text-v1.5',
    },
    price: { input: '0.90', output: '0.90' },
  },
  deepinfra: {
    name: 'deepinfra',
    label: 'DeepInfra',
    baseUrl: 'https://api.deepinfra.com/v1/openai',
    keyEnv: 'DEEPINFRA_API_KEY',
    endpoints: ['chat', 'embeddings', 'images', 'transcriptions', 'speech'],
    models: {
      'llama-3.3-70b-instruct': 'meta-llama/Llama-3.3-70B-Instruct',
      'llama-3.1-8b-instruct': 'meta-llama/Meta-Llama-3.1-8B-Instruct',
      'llama-3.1-70b': 'meta-llama/Meta-Llama-3.1-70B-Instruct',
      'llama-3.1-70b-instruct': 'meta-llama/Meta-Llama-3.1-70B-Instruct',
      'deepseek-v3.2': 'deepseek-ai/DeepSeek-V3.2',
      'gpt-oss-120b': 'openai/gpt-oss-120b',
      'bge-m3': 'BAAI/bge-m3',
      'whisper-large-v3': 'openai/whisper-large-v3',
    },
    price: { input: '0.23', output: '0.40' },
  },
  sambanova: {
    name: 'sambanova',
    label: 'SambaNova',
    baseUrl: 'https://api.sambanova.ai/v1',
    keyEnv: 'SAMBANOVA_API_KEY',
    endpoints: ['chat', 'embeddings', 'transcriptions'],
    models: {
      'llama-3.3-70b-instruct': 'Meta-Llama-3.3-70B-Instruct',
      'llama-3.1-8b-instruct': 'Meta-Llama-3.1-8B-Instruct',
      'deepseek-v3.2': 'DeepSeek-V3.2',
      'gpt-oss-120b': 'gpt-oss-120b',
      'whisper-large-v3': 'Whisper-Large-v3',
    },
    price: { input: '0.60', output: '1.20' },
  },
  phala: {
    name: 'phala',
    label: 'Phala TEE',
    baseUrl: 'https://api.redpill.ai/v1',
    keyEnv: 'PHALA_API_KEY',
    endpoints: ['chat'],
    models: {
      'llama-3.3-70b-instruct': 'phala/meta-llama/llama-3.3-70b-instruct',
      'deepseek-v3.2': 'phala/deepseek/deepseek-v3.2',
      'gemma-4-31b-it': 'phala/google/gemma-4-31b-it',
      'gpt-oss-120b': 'phala/openai/gpt-oss-120b',
      'qwen-2.5-7b-instruct': 'phala/qwen/qwen-2.5-7b-instruct',
    },
    price: { input: '2.00', output: '2.00' },
  },
  redpill: {
    name: 'redpill',
    label: 'Red Pill',
    baseUrl: 'https://api.redpill.ai/v1',
    keyEnv: 'REDPILL_API_KEY',
    endpoints: ['chat', 'embeddings'],
    models: {
      'llama-3.3-70b-instruct': 'meta-llama/llama-3.3-70b-instruct',
      'deepseek-v3.2': 'deepseek/deepseek-v3.2',
      'gemma-4-31b-it': 'google/gemma-4-31b-it',
      'gpt-oss-120b': 'openai/gpt-oss-120b',
    },
    price: { input: '1.00', output: '1.00' },
  },
  openrouter: {
    name: 'openrouter',
    label: 'OpenRouter',
    baseUrl: 'https://openrouter.ai/api/v1',
    keyEnv: 'OPENROUTER_API_KEY',
    endpoints: ['chat', 'embeddings'],
    models: {
      'llama-3.3-70b-instruct': 'meta-llama/llama-3.3-70b-instruct',
      'llama-3.1-8b-instruct': 'meta-llama/llama-3.1-8b-instruct',
      'llama-3.1-70b': 'meta-llama/llama-3.1-70b-instruct',
      'llama-3.1-70b-instruct': 'meta-llama/llama-3.1-70b-instruct',
      'deepseek-v3.2': 'deepseek/deepseek-v3.2',
      'gemma-4-31b-it': 'google/gemma-4-31b-it',
      'gpt-oss-120b': 'openai/gpt-oss-120b',
      'mistral-small-3.2-24b': 'mistralai/mistral-small-3.2-24b-instruct',
    },
    price: { input: '0.13', output: '0.40' },
  },
}

export const isProviderName = (name: string): name is ProviderName =>
  (PROVIDER_NAMES as readonly string[]).includes(name)

/** The env variable that overrides a provider's base URL (self-hosting, tests). */
export const baseUrlEnv = (name: ProviderName): string => `CLUSTER_PROVIDER_${name.toUpperCase()}_BASE_URL`

/** Request fields only some provider understands (sent to that one, dropped for the others). */
export const PROVIDER_ONLY_FIELDS: ReadonlySet<string> = new Set(
  Object.values(PROVIDERS).flatMap((p) => p.extraFields ?? []),
)
