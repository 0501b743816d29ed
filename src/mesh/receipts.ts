// Signing and checking node receipts. A node signs with its peer key; anyone checks with the public
// key inside the node's peer id (Ed25519 ids carry it), so no key exchange is needed.
import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { type Receipt, receiptPayload, type UnsignedReceipt } from '../../protocols/index.ts'

export async function signReceipt(key: PrivateKey, receipt: UnsignedReceipt): Promise<Receipt> {
  const signature = await key.sign(receiptPayload(receipt))
  return { ...receipt, signature: Buffer.from(signature).toString('base64url') }
}

/** What the gateway knows independently of the receipt and checks it against. */
export interface ReceiptExpectation {
  requestId: string
  model: string
  /** This gateway's peer id. */
  gateway: string
  /** The peer the request was sent to. */
  node: string
  /** The usage the node reported in its done frame. */
  promptTokens: number
  completionTokens: number
}

export type ReceiptCheck = { ok: true } | { ok: false; reason: string }

/** Checks that `receipt` is the node's signature over exactly this request and usage. */
export async function verifyReceipt(receipt: Receipt, expected: ReceiptExpectation): Promise<ReceiptCheck> {
  const mismatch = (
    [
      ['requestId', receipt.requestId, expected.requestId],
      ['model', receipt.model, expected.model],
      ['gateway', receipt.gateway, expected.gateway],
      ['node', receipt.node, expected.node],
      ['promptTokens', receipt.promptTokens, expected.promptTokens],
      ['completionTokens', receipt.completionTokens, expected.completionTokens],
    ] as const
  ).find(([, got, want]) => got !== want)
  if (mismatch != null) return { ok: false, reason: `${mismatch[0]} does not match` }
  let publicKey: ReturnType<typeof peerIdFromString>['publicKey']
  try {
    publicKey = peerIdFromString(receipt.node).publicKey
  } catch {
    return { ok: false, reason: 'node is not a peer id' }
  }
  if (publicKey == null) return { ok: false, reason: 'the node id does not carry its public key' }
  const { signature, ...unsigned } = receipt
  const bytes = Buffer.from(signature, 'base64url')
  try {
    if (await publicKey.verify(receiptPayload(unsigned), bytes)) return { ok: true }
  } catch {
    // malformed signature bytes
  }
  return { ok: false, reason: 'the signature does not verify' }
}
