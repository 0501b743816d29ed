// The typed data wallets sign for the escrow and the token, in one place: gateways check and relay
// these signatures; wallets (the demo wallet, tests, clients) produce them.
import { type Address, encodeAbiParameters, type Hex, keccak256, type LocalAccount } from 'viem'

export const escrowDomain = (chainId: number, escrow: Address) =>
  ({ name: 'ClusterEscrow', version: '1', chainId, verifyingContract: escrow }) as const

export const AUTHORIZE_GATEWAY_TYPES = {
  AuthorizeGateway: [
    { name: 'payer', type: 'address' },
    { name: 'gateway', type: 'address' },
    { name: 'cap', type: 'uint256' },
    { name: 'nonce', type: 'uint256' },
    { name: 'deadline', type: 'uint256' },
  ],
} as const

export const REQUEST_WITHDRAW_TYPES = {
  RequestWithdraw: [
    { name: 'payer', type: 'address' },
    { name: 'amount', type: 'uint256' },
    { name: 'nonce', type: 'uint256' },
    { name: 'deadline', type: 'uint256' },
  ],
} as const

export const RECEIVE_WITH_AUTHORIZATION_TYPES = {
  ReceiveWithAuthorization: [
    { name: 'from', type: 'address' },
    { name: 'to', type: 'address' },
    { name: 'value', type: 'uint256' },
    { name: 'validAfter', type: 'uint256' },
    { name: 'validBefore', type: 'uint256' },
    { name: 'nonce', type: 'bytes32' },
  ],
} as const

/** The EIP-3009 nonce of a gasless deposit crediting `beneficiary` (ClusterEscrow.depositNonce). */
export const depositNonce = (beneficiary: Address, salt: Hex): Hex =>
  keccak256(encodeAbiParameters([{ type: 'address' }, { type: 'bytes32' }], [beneficiary, salt]))

export interface EscrowRef {
  chainId: number
  escrow: Address
}

export function signAuthorizeGateway(
  payer: LocalAccount,
  at: EscrowRef,
  m: { gateway: Address; cap: bigint; nonce: bigint; deadline: bigint },
): Promise<Hex> {
  return payer.signTypedData({
    domain: escrowDomain(at.chainId, at.escrow),
    types: AUTHORIZE_GATEWAY_TYPES,
    primaryType: 'AuthorizeGateway',
    message: { payer: payer.address, ...m },
  })
}

export function signRequestWithdraw(
  payer: LocalAccount,
  at: EscrowRef,
  m: { amount: bigint; nonce: bigint; deadline: bigint },
): Promise<Hex> {
  return payer.signTypedData({
    domain: escrowDomain(at.chainId, at.escrow),
    types: REQUEST_WITHDRAW_TYPES,
    primaryType: 'RequestWithdraw',
    message: { payer: payer.address, ...m },
  })
}

/** `from`'s EIP-3009 authorization for a gasless deposit into the escrow crediting `beneficiary`. */
export function signGaslessDeposit(
  from: LocalAccount,
  at: EscrowRef & { usdc: Address; usdcDomain: { name: string; version: string } },
  m: { beneficiary: Address; value: bigint; validAfter: bigint; validBefore: bigint; salt: Hex },
): Promise<Hex> {
  return from.signTypedData({
    domain: { ...at.usdcDomain, chainId: at.chainId, verifyingContract: at.usdc },
    types: RECEIVE_WITH_AUTHORIZATION_TYPES,
    primaryType: 'ReceiveWithAuthorization',
    message: {
      from: from.address,
      to: at.escrow,
      value: m.value,
      validAfter: m.validAfter,
      validBefore: m.validBefore,
      nonce: depositNonce(m.beneficiary, m.salt),
    },
  })
}
