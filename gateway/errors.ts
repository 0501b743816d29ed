// Errors at the HTTP edge. Inner code throws these (or domain errors mapped to them once);
// /v1/* answers in OpenAI's shape, /api/* and the rest in the docs' {error, code} shape.
export type OpenAIErrorType =
  | 'invalid_request_error'
  | 'authentication_error'
  | 'not_found_error'
  | 'rate_limit_error'
  | 'server_error'
  | 'service_unavailable_error'

export class ApiError extends Error {
  override name = 'ApiError'
  constructor(
    readonly status: 400 | 401 | 402 | 404 | 409 | 413 | 415 | 429 | 500 | 502 | 503 | 504,
    message: string,
    readonly type: OpenAIErrorType,
    readonly code: string,
    readonly param: string | null = null,
  ) {
    super(message)
  }

  /** OpenAI's error body, for /v1/*. */
  toOpenAI(): { error: { message: string; type: string; code: string; param: string | null } } {
    return { error: { message: this.message, type: this.type, code: this.code, param: this.param } }
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
