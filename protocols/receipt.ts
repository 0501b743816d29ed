// The bytes a node signs for a receipt. Fixed field order in a JSON array behind a domain tag, so a
// signature over one kind of message can never be read as another, and both sides build the same
// bytes from the parsed fields without a canonical-JSON library.
import type { Receipt } from './schemas.ts'

export const RECEIPT_DOMAIN = 'cluster-receipt/1'

export type UnsignedReceipt = Omit<Receipt, 'signature'>

export function receiptPayload(r: UnsignedReceipt): Uint8Array {
  const fields = [
    r.v,
    r.requestId,
    r.model,
    r.modelSha256,
    r.promptTokens,
    r.completionTokens,
    r.gateway,
    r.node,
    r.issuedAt,
  ]
  return new TextEncoder().encode(`${RECEIPT_DOMAIN}\n${JSON.stringify(fields)}`)
}
