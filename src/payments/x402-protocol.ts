// x402 on the wire, for the gateway (see x402.ts): what a paid resource asks for in both protocol versions,
// the 402 response, decoding a client's payment, its EIP-3009 authorization, the payment-response header
// and the reason strings. Built on @x402/core's types, schemas and header encodings.
import { encodePaymentRequiredHeader, encodePaymentResponseHeader } from '@x402/core/http'
import { parsePaymentPayload } from '@x402/core/schemas'
import type {
  PaymentPayload,
  PaymentPayloadV1,
  PaymentRequired,
  PaymentRequirements,
  PaymentRequirementsV1,
  SettleResponse,
} from '@x402/core/types'
import { EVM_NETWORK_CHAIN_ID_MAP } from '@x402/evm/v1'
import { type Address, getAddress, type Hex, isAddress } from 'viem'
import { formatUsd } from './money.ts'

/** A CAIP-2 EVM network id: 'eip155:8453' (Base), 'eip155:84532' (Base Sepolia), 'eip155:31337' (anvil). */
export type Network = `eip155:${number}`

/** The x402 protocol version of a payment: 2 (PAYMENT-SIGNATURE) or 1 (X-PAYMENT). */
export type X402Version = 1 | 2

export type { PaymentPayload, PaymentPayloadV1, PaymentRequired, PaymentRequirements, PaymentRequirementsV1 }

export interface X402Settings {
  /** Where payments are made, CAIP-2. */
  network: Network
  /** The token paid in (USDC: 6 decimals, EIP-3009). */
  asset: Address
  /** The token's EIP-712 domain, which the payer signs under: USDC's is {name: 'USD Coin', version: '2'}. */
  assetDomain: { name: string; version: string }
  /** Who is paid. */
  payTo: Address
  /** How long a payer's authorization should stay valid, in seconds (clients set validBefore = now + this). Default 60. */
  maxTimeoutSeconds?: number
}

export const DEFAULT_MAX_TIMEOUT_SECONDS = 60

/** The paid resource, as the 402 describes it. */
export interface X402Resource {
  url: string
  description: string
  mimeType: string
}

/** What one paid resource at one price asks for, in each protocol version's shape. */
export interface X402Requirements {
  v2: PaymentRequirements
  v1: PaymentRequirementsV1
}

/** The EIP-3009 transferWithAuthorization inside an exact-scheme EVM payment. */
export interface Eip3009Authorization {
  from: Address
  to: Address
  value: bigint
  validAfter: bigint
  validBefore: bigint
  nonce: Hex
}

/** A payment taken from a request's headers: its version, the payload as sent, and its authorization. */
export type DecodedPayment = ({ version: 2; payload: PaymentPayload } | { version: 1; payload: PaymentPayloadV1 }) & {
  authorization: Eip3009Authorization
}

/** Header names, as the x402 clients send and read them (HTTP header names are case-insensitive). */
export const X402_HEADERS = {
  /** 402, v2: base64 JSON PaymentRequired. */
  paymentRequired: 'PAYMENT-REQUIRED',
  /** Retry, v2: base64 JSON PaymentPayload. */
  paymentSignature: 'PAYMENT-SIGNATURE',
  /** Retry, v1: base64 JSON PaymentPayload (v1). */
  xPayment: 'X-PAYMENT',
  /** Success, v2: base64 JSON SettleResponse. */
  paymentResponse: 'PAYMENT-RESPONSE',
  /** Success, v1: base64 JSON SettleResponse (v1). */
  xPaymentResponse: 'X-PAYMENT-RESPONSE',
} as const

/** The header that carries the settlement back to a client paying with `version`. */
export const paymentResponseHeaderName = (version: X402Version): string =>
  version === 2 ? X402_HEADERS.paymentResponse : X402_HEADERS.xPaymentResponse

/**
 * Why a payment was refused: @x402/evm's reason strings for the exact EVM scheme (kept as they are, so they
 * mean the same from a remote facilitator), plus `assetMismatch`, ours (the library has none for EIP-3009).
 * v1's value reason ('invalid_exact_evm_authorization_value') is reported as `amountMismatch`.
 */
export const X402_REASONS = {
  invalidSignature: 'invalid_exact_evm_signature',
  expired: 'invalid_exact_evm_payload_authorization_valid_before',
  notYetValid: 'invalid_exact_evm_payload_authorization_valid_after',
  amountMismatch: 'invalid_exact_evm_payload_authorization_value_mismatch',
  assetMismatch: 'invalid_exact_evm_asset_mismatch',
  networkMismatch: 'invalid_exact_evm_network_mismatch',
  recipientMismatch: 'invalid_exact_evm_recipient_mismatch',
  schemeMismatch: 'invalid_exact_evm_scheme',
  tokenNameMismatch: 'invalid_exact_evm_token_name_mismatch',
  tokenVersionMismatch: 'invalid_exact_evm_token_version_mismatch',
  insufficientFunds: 'invalid_exact_evm_insufficient_balance',
  nonceUsed: 'invalid_exact_evm_nonce_already_used',
  simulationFailed: 'invalid_exact_evm_transaction_simulation_failed',
  transactionFailed: 'invalid_exact_evm_transaction_failed',
  assetNotContract: 'asset_not_deployed_contract',
  unsupportedPayload: 'unsupported_payload_type',
  /** Settle only: the transaction was sent (its hash is in the result) but no receipt came in time. */
  settlementPending: 'settlement_pending',
} as const

const REASON_TEXT: Record<string, string> = {
  [X402_REASONS.invalidSignature]: 'the signature does not match the authorization',
  [X402_REASONS.expired]: 'the authorization has expired (validBefore is past or too close)',
  [X402_REASONS.notYetValid]: 'the authorization is not valid yet (validAfter is in the future)',
  [X402_REASONS.amountMismatch]: 'the payment is for another amount than this request costs',
  [X402_REASONS.assetMismatch]: 'the payment is in another token than the one asked for',
  [X402_REASONS.networkMismatch]: 'the payment is for another network than the one asked for',
  [X402_REASONS.recipientMismatch]: 'the payment is to another address than the one asked for',
  [X402_REASONS.schemeMismatch]: "the payment is not in the 'exact' scheme",
  [X402_REASONS.tokenNameMismatch]: "the token's EIP-712 name is not the one asked for",
  [X402_REASONS.tokenVersionMismatch]: "the token's EIP-712 version is not the one asked for",
  [X402_REASONS.insufficientFunds]: "the payer's balance does not cover the amount",
  [X402_REASONS.nonceUsed]: 'this authorization has already been used',
  [X402_REASONS.simulationFailed]: 'the transfer would fail on chain',
  [X402_REASONS.transactionFailed]: 'the transfer failed on chain',
  [X402_REASONS.assetNotContract]: 'the token is not a contract on this chain',
  [X402_REASONS.unsupportedPayload]: 'only EIP-3009 authorizations are accepted',
  [X402_REASONS.settlementPending]: 'the transfer was sent but is not confirmed yet',
}

/** A short English sentence for a reason string (the reason itself when unknown). */
export const describeReason = (reason: string): string => REASON_TEXT[reason] ?? reason

// ---------------------------------------------------------------------------------------------------------
// Requirements and the 402

const CAIP2_EVM = /^eip155:([1-9]\d{0,15})$/

/** Whether `network` is a CAIP-2 EVM network id. */
export const isCaip2Evm = (network: string): boolean => CAIP2_EVM.test(network)

/** The chain id in a CAIP-2 EVM network id ('eip155:8453' → 8453). */
export function chainIdOf(network: string): number {
  const m = CAIP2_EVM.exec(network)
  if (m == null) throw new Error(`x402: "${network}" is not a CAIP-2 EVM network id (eip155:<chain id>)`)
  return Number(m[1])
}

const V1_NAMES = new Map<number, string>(
  Object.entries(EVM_NETWORK_CHAIN_ID_MAP).map(([name, id]) => [id as number, name] as const),
)

/** x402 v1's name for a chain id ('base' for 8453, …), or undefined when v1 has none. */
export const v1NameOf = (chainId: number): string | undefined => V1_NAMES.get(chainId)

/** x402 v1's name for a chain ('base', 'base-sepolia', …), or its CAIP-2 id when v1 has no name for it. */
export function v1NetworkOf(network: Network): string {
  return V1_NAMES.get(chainIdOf(network)) ?? network
}

const CHAIN_LABELS: Record<number, string> = { 8453: 'Base', 84532: 'Base Sepolia', 31337: 'a local chain (anvil)' }

/** The requirements for one paid resource at `amount` (token base units), in the v2 and the v1 shape. */
export function requirementsFor(settings: X402Settings, resource: X402Resource, amount: bigint): X402Requirements {
  if (amount <= 0n) throw new RangeError(`x402: a price must be positive, got ${amount}`)
  chainIdOf(settings.network)
  const maxTimeoutSeconds = settings.maxTimeoutSeconds ?? DEFAULT_MAX_TIMEOUT_SECONDS
  if (!Number.isSafeInteger(maxTimeoutSeconds) || maxTimeoutSeconds <= 0) {
    throw new RangeError(`x402: maxTimeoutSeconds must be a positive integer, got ${maxTimeoutSeconds}`)
  }
  const asset = getAddress(settings.asset)
  const payTo = getAddress(settings.payTo)
  const { name, version } = settings.assetDomain
  return {
    v2: {
      scheme: 'exact',
      network: settings.network,
      asset,
      amount: amount.toString(),
      payTo,
      maxTimeoutSeconds,
      extra: { name, version },
    },
    v1: {
      scheme: 'exact',
      network: v1NetworkOf(settings.network) as PaymentRequirementsV1['network'],
      maxAmountRequired: amount.toString(),
      resource: resource.url,
      description: resource.description,
      mimeType: resource.mimeType,
      outputSchema: {},
      payTo,
      maxTimeoutSeconds,
      asset,
      extra: { name, version },
    },
  }
}

/** The JSON body of our 402: x402 v1's PaymentRequired, plus a human-readable `message` and the price. */
export interface PaymentRequiredBody {
  x402Version: 1
  error: string
  accepts: PaymentRequirementsV1[]
  message: string
  price: { amount: string; usd: string; token: 'USDC'; network: Network; payTo: Address }
}

const DEFAULT_ERROR = 'Payment required'

/**
 * A 402 for `resource` at `amount`: `header` is the value of the `PAYMENT-REQUIRED` header (base64 JSON of
 * x402 v2's PaymentRequired); `body` is the JSON body (x402 v1's PaymentRequired, for clients that read the
 * body, with a `message` saying how to pay). `headers` holds both headers to set: PAYMENT-REQUIRED and
 * `Cache-Control: no-store`, as the reference server sends. `error` (default 'Payment required') goes in both;
 * for a refused payment pass its reason.
 */
export function paymentRequired(
  settings: X402Settings,
  resource: X402Resource,
  amount: bigint,
  error?: string,
): { header: string; body: PaymentRequiredBody; headers: Record<string, string>; requirements: X402Requirements } {
  const requirements = requirementsFor(settings, resource, amount)
  const errorText = error ?? DEFAULT_ERROR
  const v2: PaymentRequired = {
    x402Version: 2,
    error: errorText,
    resource: { url: resource.url, description: resource.description, mimeType: resource.mimeType },
    accepts: [requirements.v2],
  }
  const header = encodePaymentRequiredHeader(v2)
  const usd = formatUsd(amount)
  const chainId = chainIdOf(settings.network)
  const where = `${CHAIN_LABELS[chainId] ?? 'chain'} (${settings.network})`
  const refused = error == null ? '' : `Payment refused: ${describeReason(error)} (${error}). `
  const message =
    `${refused}${resource.url} costs $${usd} in USDC on ${where}, paid to ${requirements.v2.payTo}. ` +
    `Pay per request with x402: sign an EIP-3009 transferWithAuthorization of ${amount} base units of ` +
    `${requirements.v2.asset} and send the request again with it in the PAYMENT-SIGNATURE header (x402 v2: what ` +
    'to sign is in the base64 JSON of the payment-required header) or the X-PAYMENT header (x402 v1: what to ' +
    'sign is in "accepts"). x402 clients such as @x402/fetch do this for you.'
  return {
    header,
    body: {
      x402Version: 1,
      error: errorText,
      accepts: [requirements.v1],
      message,
      price: {
        amount: amount.toString(),
        usd,
        token: 'USDC',
        network: settings.network,
        payTo: getAddress(settings.payTo),
      },
    },
    headers: { [X402_HEADERS.paymentRequired]: header, 'Cache-Control': 'no-store' },
    requirements,
  }
}

// ---------------------------------------------------------------------------------------------------------
// Decoding a payment

/** Longest payment header we read: an EIP-3009 payment is ~1.2 kB of base64; node caps all headers at 16 kB. */
const MAX_PAYMENT_HEADER = 8192
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/
const UINT = /^\d{1,78}$/
const MAX_UINT256 = 2n ** 256n - 1n
/** An EIP-3009 nonce: 32 bytes, hex. */
export const BYTES32 = /^0x[0-9a-fA-F]{64}$/
const HEX_BYTES = /^0x(?:[0-9a-fA-F]{2})+$/

/** A uint256 given as a decimal string, or undefined. */
export function uint256(value: unknown): bigint | undefined {
  if (typeof value !== 'string' || !UINT.test(value)) return undefined
  const n = BigInt(value)
  return n <= MAX_UINT256 ? n : undefined
}

/** The EIP-3009 authorization in an exact-scheme EVM payload's `payload` field, or undefined if it is none. */
function parseEip3009(payload: unknown): Eip3009Authorization | undefined {
  if (payload == null || typeof payload !== 'object') return undefined
  const { authorization: auth, signature } = payload as { authorization?: unknown; signature?: unknown }
  if (auth == null || typeof auth !== 'object') return undefined
  if (typeof signature !== 'string' || !HEX_BYTES.test(signature)) return undefined
  const a = auth as Record<string, unknown>
  const value = uint256(a.value)
  const validAfter = uint256(a.validAfter)
  const validBefore = uint256(a.validBefore)
  if (typeof a.from !== 'string' || !isAddress(a.from, { strict: false })) return undefined
  if (typeof a.to !== 'string' || !isAddress(a.to, { strict: false })) return undefined
  if (value === undefined || validAfter === undefined || validBefore === undefined) return undefined
  if (typeof a.nonce !== 'string' || !BYTES32.test(a.nonce)) return undefined
  return {
    from: getAddress(a.from),
    to: getAddress(a.to),
    value,
    validAfter,
    validBefore,
    nonce: a.nonce.toLowerCase() as Hex,
  }
}

/**
 * The payment in a request's headers: `payment-signature` (x402 v2) or `x-payment` (v1); with both, the v2
 * one. Checks the shape only (base64 JSON of a PaymentPayload of the header's version, carrying an EIP-3009
 * authorization and signature); verify() judges the rest. Returns `{ error }` saying what is wrong otherwise.
 */
export function decodePayment(headers: {
  paymentSignature?: string | undefined
  xPayment?: string | undefined
}): DecodedPayment | { error: string } {
  const v2 = headers.paymentSignature?.trim()
  const v1 = headers.xPayment?.trim()
  const version: X402Version = v2 ? 2 : 1
  const text = v2 || v1
  const name = version === 2 ? X402_HEADERS.paymentSignature : X402_HEADERS.xPayment
  if (!text)
    return { error: `no payment: send it in the ${X402_HEADERS.paymentSignature} or ${X402_HEADERS.xPayment} header` }
  if (text.length > MAX_PAYMENT_HEADER) return { error: `the ${name} header is too long (${text.length} characters)` }
  if (!BASE64.test(text)) return { error: `the ${name} header is not base64` }
  let json: unknown
  try {
    json = JSON.parse(Buffer.from(text, 'base64').toString('utf8'))
  } catch {
    return { error: `the ${name} header is not base64-encoded JSON` }
  }
  const parsed = parsePaymentPayload(json)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]
    const where = issue?.path.length ? ` at ${issue.path.join('.')}` : ''
    return { error: `the ${name} header is not an x402 payment${where}: ${issue?.message ?? 'invalid'}` }
  }
  const payload = parsed.data
  if (payload.x402Version !== version) {
    const expected = payload.x402Version === 2 ? X402_HEADERS.paymentSignature : X402_HEADERS.xPayment
    return {
      error: `the ${name} header carries an x402 version ${payload.x402Version} payment: send it in ${expected}`,
    }
  }
  const authorization = parseEip3009(payload.payload)
  if (authorization === undefined) {
    return {
      error:
        `the ${name} payment is not an EIP-3009 authorization: payload.authorization ` +
        '{from, to, value, validAfter, validBefore, nonce} and payload.signature expected',
    }
  }
  return payload.x402Version === 2
    ? { version: 2, payload: payload as PaymentPayload, authorization }
    : { version: 1, payload: payload as PaymentPayloadV1, authorization }
}

/** The EIP-3009 authorization inside an exact-scheme EVM payment (for de-duplication and reconciliation). */
export function authorizationOf(
  payment: DecodedPayment | PaymentPayload | PaymentPayloadV1,
): Eip3009Authorization | undefined {
  if ('authorization' in payment && 'version' in payment) return payment.authorization
  return parseEip3009((payment as PaymentPayload | PaymentPayloadV1).payload)
}

// ---------------------------------------------------------------------------------------------------------
// Results and the payment-response header

export interface VerifyResult {
  isValid: boolean
  /** One of X402_REASONS (or a remote facilitator's own) when not valid. */
  invalidReason?: string
  /** Detail, when there is some (e.g. the chain's revert message). */
  invalidMessage?: string
  payer?: Address
}

export interface SettleResult {
  success: boolean
  /** The transferWithAuthorization transaction: on success; on failure when one was sent (reverted or pending). */
  transaction?: Hex
  errorReason?: string
  errorMessage?: string
  payer?: Address
  /** The network as the payment named it (v1: e.g. 'base'; v2: CAIP-2). */
  network: string
}

/**
 * The value of the `PAYMENT-RESPONSE` (v2) or `X-PAYMENT-RESPONSE` (v1) header for a settle result: base64
 * JSON of x402's SettleResponse {success, transaction, network, payer, errorReason?}. Name:
 * paymentResponseHeaderName(version). Both versions encode it the same way (v1 names the network as v1 does).
 */
export function paymentResponseHeader(result: SettleResult, _version: X402Version): string {
  const response: SettleResponse = {
    success: result.success,
    transaction: result.transaction ?? '',
    network: result.network as SettleResponse['network'],
    ...(result.payer ? { payer: result.payer } : {}),
    ...(result.errorReason ? { errorReason: result.errorReason } : {}),
  }
  return encodePaymentResponseHeader(response)
}
