// Errors at the HTTP edge. Inner code throws these (or domain errors mapped to them once);
// /v1/* answers in OpenAI's shape, /api/* and the rest in the docs' {error, code} shape.
import { ZodNumber, type z } from 'zod'

export type OpenAIErrorType =
  | 'invalid_request_error'
  | 'authentication_error'
  | 'not_found_error'
  | 'rate_limit_error'
  | 'server_error'
  | 'service_unavailable_error'
  | 'insufficient_quota'

export class ApiError extends Error {
  override name = 'ApiError'
  constructor(
    readonly status: 400 | 401 | 402 | 403 | 404 | 409 | 413 | 415 | 416 | 429 | 500 | 501 | 502 | 503 | 504,
    message: string,
    readonly type: OpenAIErrorType,
    readonly code: string,
    readonly param: string | null = null,
  ) {
    super(message)
  }

  /** Extra response headers (Retry-After, …). */
  headers: Record<string, string> = {}

  /** OpenAI's error body, for /v1/*. Payment errors also carry the docs' top-level code. */
  toOpenAI(): { error: { message: string; type: string; code: string; param: string | null }; code?: string } {
    const body = { error: { message: this.message, type: this.type, code: this.code, param: this.param } }
    return this.status === 402 ? { ...body, code: this.code } : body
  }

  /** The docs' error body, for /api/* and the rest. */
  toDocs(): { error: string; code: string } {
    return { error: this.message, code: this.code.toUpperCase() }
  }
}

export const invalidRequest = (message: string, param: string | null = null, code = 'invalid_request'): ApiError =>
  new ApiError(400, message, 'invalid_request_error', code, param)

export const modelNotFound = (model: string): ApiError =>
  new ApiError(
    404,
    `The model '${model}' does not exist or is not served by this cluster. GET /v1/models lists the models available.`,
    'invalid_request_error',
    'model_not_found',
    'model',
  )

export const noNodes = (model: string, detail?: string): ApiError =>
  new ApiError(
    503,
    `No GPU nodes available for the requested model '${model}'.${detail ? ` ${detail}` : ''} Try again later.`,
    'service_unavailable_error',
    'no_nodes_available',
  )

export const unauthorized = (message = 'Missing or invalid API key. Include Authorization: Bearer <key>.'): ApiError =>
  new ApiError(401, message, 'authentication_error', 'unauthorized')

/** Authenticated, but not allowed (a valid key without the role or ownership the action needs). */
export const forbidden = (message: string): ApiError => new ApiError(403, message, 'authentication_error', 'forbidden')

export const notFound = (message: string): ApiError => new ApiError(404, message, 'not_found_error', 'not_found')

export const conflict = (message: string): ApiError => new ApiError(409, message, 'invalid_request_error', 'conflict')

export const rateLimited = (retryAfterSeconds: number): ApiError => {
  const err = new ApiError(
    429,
    `Too many requests. Retry after ${retryAfterSeconds} s, backing off exponentially.`,
    'rate_limit_error',
    'rate_limited',
  )
  err.headers['Retry-After'] = String(retryAfterSeconds)
  return err
}

export const insufficientBalance = (current: string, required: string): ApiError =>
  new ApiError(
    402,
    `Insufficient balance. Current: $${current}, required: $${required}`,
    'insufficient_quota',
    'INSUFFICIENT_BALANCE',
  )

// ---- request bodies: one formatter of zod issues for every route ----

/** A field's path in OpenAI's notation: `messages[0].content`. */
export function paramOf(path: readonly PropertyKey[]): string {
  return path
    .map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`))
    .join('')
    .replace(/^\./, '')
}

/** Whether `input` has a value (anything but undefined) at `path`. */
function present(input: unknown, path: readonly PropertyKey[]): boolean {
  let value = input
  for (const key of path) {
    if (value == null || typeof value !== 'object' || !Object.hasOwn(value, key)) return false
    value = (value as Record<PropertyKey, unknown>)[key]
  }
  return value !== undefined
}

const TYPE_NAMES: Record<string, string> = {
  string: 'a string',
  number: 'a number',
  int: 'an integer',
  boolean: 'true or false',
  array: 'an array',
  object: 'an object',
  null: 'null',
}

/** A finite bound worth stating (zod's integers carry ±MAX_SAFE_INTEGER when none was set). */
const stated = (n: number | null | undefined): n is number => n != null && Math.abs(n) < Number.MAX_SAFE_INTEGER

/** What a number field must be, from its schema: "must be an integer between 1 and 4". */
function numberRule(schema: z.ZodNumber, isInt: boolean): string {
  const kind = isInt || schema.isInt ? 'an integer' : 'a number'
  const min = schema.minValue
  const max = schema.maxValue
  if (stated(min) && stated(max)) return `must be ${kind} between ${min} and ${max}`
  if (stated(min)) return `must be ${kind} of at least ${min}`
  if (stated(max)) return `must be ${kind} of at most ${max}`
  return `must be ${kind}`
}

const SIZE_UNITS: Record<string, string> = { string: 'characters', array: 'items', set: 'items', file: 'bytes' }

/**
 * The error map of every request schema: what a present field must be, as a predicate ("must be a
 * number between 0 and 2"), so that `'<field>' <predicate>.` reads as a sentence. A schema's own
 * message (e.g. 'must be a non-empty string') takes precedence; phrase those the same way.
 */
export const fieldErrorMap: z.core.$ZodErrorMap = (issue) => {
  const schema = issue.schema
  const isNumber = schema instanceof ZodNumber
  switch (issue.code) {
    case 'invalid_type':
      if (isNumber) return numberRule(schema, issue.expected === 'int')
      return `must be ${TYPE_NAMES[issue.expected] ?? issue.expected}`
    case 'too_small':
    case 'too_big': {
      if (isNumber) return numberRule(schema, false)
      const small = issue.code === 'too_small'
      const limit = small ? issue.minimum : issue.maximum
      const unit = SIZE_UNITS[issue.origin]
      if (unit == null) return `must be ${small ? 'at least' : 'at most'} ${limit}`
      if (small && Number(limit) === 1) return 'must not be empty'
      const exact = issue.exact === true ? 'exactly' : small ? 'at least' : 'at most'
      return issue.origin === 'string'
        ? `must be ${exact} ${limit} ${unit} long`
        : `must have ${exact} ${limit} ${unit}`
    }
    case 'invalid_value': {
      const values = issue.values.map((v) => JSON.stringify(v))
      return values.length === 1 ? `must be ${values[0]}` : `must be one of ${values.join(', ')}`
    }
    case 'invalid_format':
      return issue.format === 'regex' ? 'is not in the expected format' : `must be a valid ${issue.format}`
    case 'invalid_union': {
      // The forms the value could have taken: the types its branches expected.
      const forms = new Set<string>()
      for (const branch of issue.errors) {
        const first = branch[0]
        if (first?.code === 'invalid_type' && first.path.length === 0)
          forms.add(TYPE_NAMES[first.expected] ?? first.expected)
      }
      return forms.size > 0 ? `must be ${[...forms].join(' or ')}` : 'is not in any of the accepted forms'
    }
    case 'not_multiple_of':
      return `must be a multiple of ${issue.divisor}`
    case 'unrecognized_keys':
      return `has unknown fields: ${issue.keys.join(', ')}`
    default:
      return 'is invalid'
  }
}

/**
 * Parses a request body (or query) with `schema`, or throws a 400 naming the first bad field:
 * "'<field>' is required." only when it is absent, else what it must be ("'temperature' must be a
 * number between 0 and 2."), with `param` set to it.
 */
export function parseFields<S extends z.ZodType>(schema: S, input: unknown): z.output<S> {
  const parsed = schema.safeParse(input, { error: fieldErrorMap })
  if (parsed.success) return parsed.data
  const issue = parsed.error.issues[0]
  const param = issue == null ? '' : paramOf(issue.path)
  if (issue == null || param === '') throw invalidRequest('The request body must be a JSON object.')
  // A refinement's message says itself what is missing ("is required unless …").
  const missing = issue.code !== 'custom' && !present(input, issue.path)
  const message = missing ? 'is required' : issue.message.replace(/\.$/, '')
  throw invalidRequest(`'${param}' ${message}.`, param)
}
