// Errors at the HTTP edge. Inner code throws these (or domain errors mapped to them once);
// /v1/* answers in OpenAI's shape, /api/* and the rest in the docs' {error, code} shape.
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
    readonly status: 400 | 401 | 402 | 403 | 404 | 409 | 413 | 415 | 416 | 429 | 500 | 502 | 503 | 504,
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

export const forbidden = (message: string): ApiError => new ApiError(401, message, 'authentication_error', 'forbidden')

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
