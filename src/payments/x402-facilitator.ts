// x402 facilitators (see x402.ts): they verify a payment against our requirements and settle it on chain.
// One runs in process (@x402/core's x402Facilitator with @x402/evm's exact EVM schemes, sending transfers
// from its own key), the other is a remote service over HTTP (@x402/core's HTTPFacilitatorClient). Both
// first compare the payment with what we asked for, then let the library check the rest.
import { x402Facilitator } from '@x402/core/facilitator'
import { HTTPFacilitatorClient } from '@x402/core/http'
import {
  type PaymentPayload,
  type PaymentPayloadV1,
  type PaymentRequirements,
  type PaymentRequirementsV1,
  SettleError,
  type SettleResponse,
  VerifyError,
  type VerifyResponse,
} from '@x402/core/types'
import { toFacilitatorEvmSigner } from '@x402/evm'
import { ExactEvmScheme } from '@x402/evm/exact/facilitator'
import { ExactEvmSchemeV1 } from '@x402/evm/exact/v1/facilitator'
import {
  type Abi,
  type Address,
  createPublicClient,
  createWalletClient,
  defineChain,
  getAddress,
  type Hex,
  http,
  isAddress,
  isAddressEqual,
  type PublicClient,
} from 'viem'
import { privateKeyToAccount } from 'viem/accounts'
import {
  authorizationOf,
  BYTES32,
  chainIdOf,
  type DecodedPayment,
  type Eip3009Authorization,
  isCaip2Evm,
  type Network,
  type SettleResult,
  uint256,
  type VerifyResult,
  v1NameOf,
  X402_REASONS,
  type X402Requirements,
} from './x402-protocol.ts'

/** A payment as decodePayment gives it, or its payload alone (either version). */
export type PaymentInput = DecodedPayment | PaymentPayload | PaymentPayloadV1

/** Our requirements: both shapes (requirementsFor), or the one of the payment's version. */
export type RequirementsInput = X402Requirements | PaymentRequirements | PaymentRequirementsV1

/**
 * Verifies and settles exact-scheme EIP-3009 payments against our requirements. Both resolve with a result
 * for a payment that is refused, and reject when the outcome is unknown (the chain or the facilitator could
 * not be reached, a timeout): after a settle that rejects, `authorizationUsed` tells whether it happened.
 * Requirements of the other version than the payment's (a v2 payment, v1 requirements) are a programming
 * error: they throw.
 */
export interface Facilitator {
  /**
   * Whether `payment` pays `requirements`: the payload matches what we asked (scheme, network, asset and its
   * EIP-712 domain, payTo, amount), the signature is the payer's, the authorization is valid now and for long
   * enough, to payTo for the amount, unused, and the payer's balance covers it (the transfer is simulated).
   */
  verify(payment: PaymentInput, requirements: RequirementsInput): Promise<VerifyResult>
  /**
   * Sends the transfer and waits for its receipt. The library re-checks all but the simulation before it
   * sends; a failed settlement is then verified in full to report why (`transaction` is set if one was sent
   * and reverted). `settlement_pending` (with `transaction`): sent, no receipt in time — settling the same
   * payment again waits for that transaction rather than sending another; or reconcile by authorizationUsed.
   */
  settle(payment: PaymentInput, requirements: RequirementsInput): Promise<SettleResult>
}

/** The library-level calls a facilitator makes: @x402/core's x402Facilitator or HTTPFacilitatorClient. */
interface Backend {
  verify(payload: PaymentPayload, requirements: PaymentRequirements): Promise<VerifyResponse>
  settle(payload: PaymentPayload, requirements: PaymentRequirements): Promise<SettleResponse>
}

/** A payment and the requirements of its version, taken apart. */
type Checked =
  | { version: 2; payload: PaymentPayload; requirements: PaymentRequirements; authorization?: Eip3009Authorization }
  | { version: 1; payload: PaymentPayloadV1; requirements: PaymentRequirementsV1; authorization?: Eip3009Authorization }

const isV1Requirements = (r: PaymentRequirements | PaymentRequirementsV1): r is PaymentRequirementsV1 =>
  'maxAmountRequired' in r

function takeApart(payment: PaymentInput, requirements: RequirementsInput): Checked {
  const payload = 'version' in payment && 'authorization' in payment ? payment.payload : payment
  const authorization = authorizationOf(payload)
  const auth = authorization ? { authorization } : {}
  const version = payload.x402Version
  if (version !== 1 && version !== 2) throw new Error(`x402: unsupported x402 version ${String(version)}`)
  let chosen: PaymentRequirements | PaymentRequirementsV1
  if ('v1' in requirements && 'v2' in requirements) chosen = version === 1 ? requirements.v1 : requirements.v2
  else chosen = requirements
  if (isV1Requirements(chosen) !== (version === 1)) {
    throw new Error(`x402: a version ${version} payment needs version ${version} requirements`)
  }
  return version === 1
    ? { version, payload: payload as PaymentPayloadV1, requirements: chosen as PaymentRequirementsV1, ...auth }
    : { version, payload: payload as PaymentPayload, requirements: chosen as PaymentRequirements, ...auth }
}

/** v1 requirements as v2's (for a v1 payment on a network v1 has no name for: the network is a CAIP-2 id). */
const v2Of = (r: PaymentRequirementsV1): PaymentRequirements => ({
  scheme: r.scheme,
  network: r.network,
  asset: r.asset,
  amount: r.maxAmountRequired,
  payTo: r.payTo,
  maxTimeoutSeconds: r.maxTimeoutSeconds,
  extra: r.extra,
})

const sameAddress = (a: unknown, b: unknown): boolean =>
  typeof a === 'string' &&
  typeof b === 'string' &&
  isAddress(a, { strict: false }) &&
  isAddress(b, { strict: false }) &&
  isAddressEqual(a, b)

const sameAmount = (a: unknown, b: unknown): boolean => {
  const x = uint256(a)
  return x !== undefined && x === uint256(b)
}

/** The first way a payment differs from what we asked for, as a reason string (undefined: it matches). */
function mismatch(p: Checked): string | undefined {
  if (p.authorization === undefined) return X402_REASONS.unsupportedPayload
  if (p.version === 1) {
    if (p.payload.scheme !== 'exact') return X402_REASONS.schemeMismatch
    if (p.payload.network !== p.requirements.network) return X402_REASONS.networkMismatch
    return undefined // v1 payloads carry no copy of the requirements: the library checks the authorization
  }
  const accepted = p.payload.accepted
  const ours = p.requirements
  if (accepted?.scheme !== 'exact') return X402_REASONS.schemeMismatch
  if (accepted.network !== ours.network) return X402_REASONS.networkMismatch
  if (!sameAddress(accepted.asset, ours.asset)) return X402_REASONS.assetMismatch
  if (accepted.extra?.name !== ours.extra?.name) return X402_REASONS.tokenNameMismatch
  if (accepted.extra?.version !== ours.extra?.version) return X402_REASONS.tokenVersionMismatch
  if (!sameAddress(accepted.payTo, ours.payTo)) return X402_REASONS.recipientMismatch
  if (!sameAmount(accepted.amount, ours.amount)) return X402_REASONS.amountMismatch
  return undefined
}

/**
 * The payload and requirements to hand the library. A v1 payment on a network v1 has no name for (its
 * network is a CAIP-2 id) goes as the v2 payment it is equivalent to: the library's v1 scheme knows named
 * networks only.
 */
function forLibrary(p: Checked): [PaymentPayload, PaymentRequirements] {
  if (p.version === 2) return [p.payload, p.requirements]
  if (isCaip2Evm(p.payload.network)) {
    const requirements = v2Of(p.requirements)
    return [{ x402Version: 2, accepted: requirements, payload: p.payload.payload }, requirements]
  }
  // x402Facilitator and HTTPFacilitatorClient take v1 shapes too, dispatching on x402Version
  return [p.payload as unknown as PaymentPayload, p.requirements as unknown as PaymentRequirements]
}

const ALIASES: Record<string, string> = { invalid_exact_evm_authorization_value: X402_REASONS.amountMismatch }

/**
 * A library error message made short: viem's are many lines (ABI, arguments, docs link); the `Details:` line
 * (e.g. "execution reverted: custom error 0xd309466d: …") or else the first line, at most 300 characters.
 */
function shortMessage(message: string | undefined): string | undefined {
  if (!message) return undefined
  const lines = message.split('\n').map((line) => line.trim())
  const details = lines.find((line) => line.startsWith('Details: '))?.slice('Details: '.length)
  const text = details || lines.find((line) => line.length > 0) || ''
  return text.length > 300 ? `${text.slice(0, 299)}…` : text || undefined
}

/** A reason string as we report it: v1 aliases mapped; an error message (the v1 scheme returns those) moved out. */
function normalizeReason(reason: string | undefined, message: string | undefined, fallback: string) {
  if (!reason) return { reason: fallback, message: shortMessage(message) }
  if (/\s/.test(reason) || reason.length > 80) return { reason: fallback, message: shortMessage(message ?? reason) }
  return { reason: ALIASES[reason] ?? reason, message: shortMessage(message) }
}

function payerOf(payer: string | undefined, p: Checked): Address | undefined {
  if (payer && isAddress(payer, { strict: false })) return getAddress(payer)
  return p.authorization?.from
}

const networkOf = (p: Checked): string => (p.version === 1 ? p.payload.network : p.requirements.network)

function toVerifyResult(res: VerifyResponse, p: Checked): VerifyResult {
  const payer = payerOf(res.payer, p)
  const who = payer ? { payer } : {}
  if (res.isValid) return { isValid: true, ...who }
  const { reason, message } = normalizeReason(res.invalidReason, res.invalidMessage, X402_REASONS.simulationFailed)
  return { isValid: false, invalidReason: reason, ...(message ? { invalidMessage: message } : {}), ...who }
}

function toSettleResult(res: SettleResponse, p: Checked): SettleResult {
  const payer = payerOf(res.payer, p)
  const who = payer ? { payer } : {}
  const network = networkOf(p)
  const tx = TX_HASH.test(res.transaction ?? '') ? { transaction: res.transaction as Hex } : {}
  if (res.success) return { success: true, ...tx, ...who, network }
  const { reason, message } = normalizeReason(res.errorReason, res.errorMessage, X402_REASONS.transactionFailed)
  return { success: false, errorReason: reason, ...(message ? { errorMessage: message } : {}), ...tx, ...who, network }
}

const TX_HASH = /^0x[0-9a-fA-F]{64}$/

function makeFacilitator(backend: Backend, checkNetwork: (p: Checked) => void): Facilitator {
  const verifyChecked = async (p: Checked): Promise<VerifyResult> => {
    const refused = mismatch(p)
    if (refused)
      return { isValid: false, invalidReason: refused, ...(p.authorization ? { payer: p.authorization.from } : {}) }
    const [payload, requirements] = forLibrary(p)
    return toVerifyResult(await backend.verify(payload, requirements), p)
  }
  return {
    async verify(payment, requirements) {
      const p = takeApart(payment, requirements)
      checkNetwork(p)
      return verifyChecked(p)
    },
    async settle(payment, requirements) {
      const p = takeApart(payment, requirements)
      checkNetwork(p)
      const refused = mismatch(p)
      if (refused) {
        const who = p.authorization ? { payer: p.authorization.from } : {}
        return { success: false, errorReason: refused, ...who, network: networkOf(p) }
      }
      const [payload, reqs] = forLibrary(p)
      const result = toSettleResult(await backend.settle(payload, reqs), p)
      if (result.success || result.errorReason === X402_REASONS.settlementPending) return result
      // Refused, or reverted on chain. The library's settle re-verifies without simulating, and a transfer the
      // chain refuses comes back as a generic failure (the token's custom errors are not in the library's
      // ABI): a full verify says why (already used — by a concurrent settle, say —, balance too low, expired…).
      const diagnosis = await verifyChecked(p).catch(() => undefined)
      if (diagnosis && !diagnosis.isValid && diagnosis.invalidReason) {
        const message = result.errorMessage ?? diagnosis.invalidMessage
        return { ...result, errorReason: diagnosis.invalidReason, ...(message ? { errorMessage: message } : {}) }
      }
      return result
    },
  }
}

export interface EmbeddedFacilitatorOptions {
  /** JSON-RPC URL of the chain payments are made on. */
  rpcUrl: string
  chainId: number
  /** The facilitator's key: it sends the transfers and pays their gas (it needs ETH, no USDC). */
  privateKey: Hex
  /**
   * Where Multicall3 is, if not at its canonical address 0xcA11bde05977b3631167028862bE2a173976CA11 (which
   * @x402/evm calls to tell why a transfer would fail: without it, an unfunded payer or a used nonce is
   * reported as a generic simulation failure).
   */
  multicall3?: Address
  /** How often to poll for a receipt, ms (default 200). */
  pollingIntervalMs?: number
  /** How long settle waits for a receipt before it reports `settlement_pending`, ms (library default: 180 s). */
  confirmationTimeoutMs?: number
}

const CANONICAL_MULTICALL3 = '0xcA11bde05977b3631167028862bE2a173976CA11'

/**
 * An in-process facilitator: @x402/core's x402Facilitator with @x402/evm's exact EVM scheme for v2 (this
 * chain's CAIP-2 id) and its v1 exact scheme (this chain's v1 name, if it has one), on the chain at rpcUrl,
 * sending transfers from `privateKey`'s account (one at a time, so that their nonces never collide).
 */
export function embeddedFacilitator(opts: EmbeddedFacilitatorOptions): Facilitator & { address: Address } {
  const network: Network = `eip155:${opts.chainId}`
  chainIdOf(network)
  const account = privateKeyToAccount(opts.privateKey)
  const chain = defineChain({
    id: opts.chainId,
    name: network,
    nativeCurrency: { name: 'Ether', symbol: 'ETH', decimals: 18 },
    rpcUrls: { default: { http: [opts.rpcUrl] } },
  })
  const transport = http(opts.rpcUrl)
  const pollingInterval = opts.pollingIntervalMs ?? 200
  const publicClient = createPublicClient({ chain, transport, pollingInterval })
  const wallet = createWalletClient({ chain, transport, account, pollingInterval })
  const multicall3 = opts.multicall3 ? getAddress(opts.multicall3) : undefined

  let sending: Promise<unknown> = Promise.resolve()
  /** Runs `send` after the sends before it have been accepted by the node (not mined). */
  const serialized = <T>(send: () => Promise<T>): Promise<T> => {
    const run = sending.then(send, send)
    sending = run.catch(() => undefined)
    return run
  }

  const signer = toFacilitatorEvmSigner(
    {
      address: account.address,
      readContract: (args) =>
        publicClient.readContract({
          address: multicall3 && isAddressEqual(args.address, CANONICAL_MULTICALL3) ? multicall3 : args.address,
          abi: args.abi as Abi,
          functionName: args.functionName,
          args: args.args ?? [],
        }),
      verifyTypedData: (args) => publicClient.verifyTypedData(args as Parameters<PublicClient['verifyTypedData']>[0]),
      writeContract: (args) =>
        serialized(() =>
          wallet.writeContract({
            address: args.address,
            abi: args.abi as Abi,
            functionName: args.functionName,
            args: args.args,
            ...(args.gas === undefined ? {} : { gas: args.gas }),
            ...(args.dataSuffix === undefined ? {} : { dataSuffix: args.dataSuffix }),
          }),
        ),
      sendTransaction: (args) => serialized(() => wallet.sendTransaction({ to: args.to, data: args.data })),
      waitForTransactionReceipt: (args) => publicClient.waitForTransactionReceipt(args),
      getCode: (args) => publicClient.getCode(args),
    },
    opts.confirmationTimeoutMs === undefined ? {} : { confirmationTimeoutMs: opts.confirmationTimeoutMs },
  )

  const facilitator = new x402Facilitator().register(network, new ExactEvmScheme(signer))
  const v1Name = v1NameOf(opts.chainId)
  if (v1Name) facilitator.registerV1(v1Name as PaymentRequirementsV1['network'], new ExactEvmSchemeV1(signer))

  const checkNetwork = (p: Checked) => {
    const ours = p.version === 1 ? (v1Name ?? network) : network
    if (p.requirements.network !== ours) {
      throw new Error(`x402: this facilitator settles on ${ours}, not ${p.requirements.network}`)
    }
  }
  return { ...makeFacilitator(facilitator, checkNetwork), address: account.address }
}

/**
 * A remote facilitator over HTTP (@x402/core's HTTPFacilitatorClient: POST {url}/verify and {url}/settle),
 * e.g. for Base mainnet. A refusal it answers with an error status (VerifyError / SettleError) comes back as
 * a result like any other; an unreachable facilitator or a timeout rejects (for settle: outcome unknown).
 */
export function remoteFacilitator(url: string, opts: { timeoutMs?: number } = {}): Facilitator {
  const client = new HTTPFacilitatorClient({
    url,
    ...(opts.timeoutMs === undefined ? {} : { timeoutMs: opts.timeoutMs }),
  })
  const backend: Backend = {
    async verify(payload, requirements) {
      try {
        return await client.verify(payload, requirements)
      } catch (error) {
        if (!(error instanceof VerifyError)) throw error
        return {
          isValid: false,
          ...(error.invalidReason ? { invalidReason: error.invalidReason } : {}),
          ...(error.invalidMessage ? { invalidMessage: error.invalidMessage } : {}),
          ...(error.payer ? { payer: error.payer } : {}),
        }
      }
    },
    async settle(payload, requirements) {
      try {
        return await client.settle(payload, requirements)
      } catch (error) {
        if (!(error instanceof SettleError)) throw error
        return {
          success: false,
          ...(error.errorReason ? { errorReason: error.errorReason } : {}),
          ...(error.errorMessage ? { errorMessage: error.errorMessage } : {}),
          ...(error.payer ? { payer: error.payer } : {}),
          transaction: error.transaction,
          network: error.network,
        }
      }
    },
  }
  return makeFacilitator(backend, () => undefined)
}

const AUTHORIZATION_STATE_ABI = [
  {
    type: 'function',
    name: 'authorizationState',
    stateMutability: 'view',
    inputs: [
      { name: 'authorizer', type: 'address' },
      { name: 'nonce', type: 'bytes32' },
    ],
    outputs: [{ name: '', type: 'bool' }],
  },
] as const

const readers = new Map<string, PublicClient>()

/**
 * Whether the EIP-3009 authorization `nonce` of `from` has been used (or cancelled) on chain: USDC's
 * authorizationState(from, nonce). Use it to reconcile a settlement whose outcome is unknown.
 */
export async function authorizationUsed(
  rpcUrl: string,
  asset: Address | string,
  from: Address | string,
  nonce: Hex | string,
): Promise<boolean> {
  if (!isAddress(asset, { strict: false }) || !isAddress(from, { strict: false })) {
    throw new Error('x402: authorizationUsed needs the token and payer addresses')
  }
  if (!BYTES32.test(nonce)) throw new Error(`x402: "${nonce}" is not an EIP-3009 nonce (32 bytes, hex)`)
  let reader = readers.get(rpcUrl)
  if (!reader) {
    reader = createPublicClient({ transport: http(rpcUrl) })
    readers.set(rpcUrl, reader)
  }
  return reader.readContract({
    address: asset,
    abi: AUTHORIZATION_STATE_ABI,
    functionName: 'authorizationState',
    args: [from, nonce as Hex],
  })
}
