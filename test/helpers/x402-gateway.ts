// The chain and x402 sections of a gateway under test: settlement against the dev chain's escrow
// and x402 verified and settled by the embedded facilitator, the docs' USDC domain.
import type { Hex } from 'viem'
import { privateKeyToAccount } from 'viem/accounts'
import type { GatewayConfig } from '../../gateway/gateway.ts'
import { type DevChain, testAccounts } from '../../src/chain/devchain.ts'
import { embeddedFacilitator, type Network } from '../../src/payments/x402.ts'

const accounts = testAccounts()
/** The gateway's signing key (test account 1); x402 payments go to its address. */
export const gatewayKey = (accounts[1] as { privateKey: Hex }).privateKey
export const payTo = privateKeyToAccount(gatewayKey).address

export function x402Sections(
  chain: DevChain,
  x402: { settleTimeoutMs?: number; reconcileIntervalMs?: number } = {},
): Pick<GatewayConfig, 'chain' | 'x402'> {
  const network: Network = `eip155:${chain.chainId}`
  return {
    chain: {
      rpcUrl: chain.rpcUrl,
      chainId: chain.chainId,
      usdc: chain.usdc,
      escrow: chain.escrow,
      signerKey: gatewayKey,
      confirmations: 0,
      pollIntervalMs: 200,
      settleIntervalMs: 3_600_000,
    },
    x402: {
      settings: {
        network,
        asset: chain.usdc,
        assetDomain: { name: 'USD Coin', version: '2' },
        payTo,
        maxTimeoutSeconds: 60,
      },
      facilitator: embeddedFacilitator({
        rpcUrl: chain.rpcUrl,
        chainId: chain.chainId,
        privateKey: (accounts[5] as { privateKey: Hex }).privateKey,
        multicall3: chain.multicall3,
      }),
      rpcUrl: chain.rpcUrl,
      ...x402,
    },
  }
}
