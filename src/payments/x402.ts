// x402 (HTTP 402 + USDC) for the gateway, on @x402/core and @x402/evm: what a paid resource asks for in
// both protocol versions, the 402 response, decoding a client's payment, the payment-response header, and
// facilitators that verify and settle (in process on our own chain, or a remote one over HTTP). The gateway
// calls these itself around its handler: nothing here wraps, buffers or delays a response.
//
// Versions on the wire (what @x402/fetch's x402HTTPClient does):
//   v2  402: `PAYMENT-REQUIRED` header = base64 JSON {x402Version: 2, error, resource, accepts}; the client
//       reads this header first. Retry: `PAYMENT-SIGNATURE` header. Success: `PAYMENT-RESPONSE` header.
//   v1  402: JSON body {x402Version: 1, error, accepts}; a v2 client reads the body only when the header is
//       absent, a v1 client only ever reads the body. Retry: `X-PAYMENT`. Success: `X-PAYMENT-RESPONSE`.
// A 402 from us carries both: the header for v2 clients and the v1 body (plus a human-readable `message`).
//
// v1 names networks ('base', 'base-sepolia', …), v2 uses CAIP-2 ('eip155:8453'). For a chain with no v1
// name (anvil's 31337, say) the v1 requirements carry the CAIP-2 id as their network: the official v1
// client (ExactEvmSchemeV1) knows named networks only and refuses it, but a client that signs for the chain
// id in the CAIP-2 string can pay, and such a v1 payment is verified and settled as its v2 equivalent (the
// exact EVM scheme checks the same EIP-3009 authorization in both versions).
//
// x402-protocol.ts: requirements, the 402, decoding, headers, reasons. x402-facilitator.ts: verify and settle.
export * from './x402-facilitator.ts'
export * from './x402-protocol.ts'
