// A wallet acting on the devchain's escrow with its own key, for tests: it is funded, and each call
// waits until mined and throws if it reverted.
import {
  type Address,
  createPublicClient,
  createWalletClient,
  type Hex,
  http,
  parseEther,
  type TransactionReceipt,
} from 'viem'
import type { PrivateKeyAccount } from 'viem/accounts'
import { clusterEscrowAbi, testUsdcAbi } from '../../src/chain/artifacts.ts'
import { type DevChain, devChainViem, fundWallet } from '../../src/chain/devchain.ts'

export type EscrowActor = Awaited<ReturnType<typeof escrowActor>>

export async function escrowActor(
  chain: DevChain,
  account: PrivateKeyAccount,
  options: { usdc: bigint; eth?: bigint; gateway: Address },
) {
  await fundWallet(chain, account.address, { usdc: options.usdc, eth: options.eth ?? parseEther('1') })
  const transport = http(chain.rpcUrl)
  const publicClient = createPublicClient({ chain: devChainViem(chain), transport, pollingInterval: 20 })
  const wallet = createWalletClient({ chain: devChainViem(chain), transport, account })
  const mined = async (hash: Hex): Promise<TransactionReceipt> => {
    const receipt = await publicClient.waitForTransactionReceipt({ hash })
    if (receipt.status !== 'success') throw new Error(`tx ${hash} reverted`)
    return receipt
  }
  type Call = 'deposit' | 'requestWithdraw' | 'cancelWithdraw' | 'withdraw' | 'authorizeGateway'
  const escrow = async (functionName: Call, args: readonly unknown[] = []): Promise<TransactionReceipt> =>
    // biome-ignore lint/suspicious/noExplicitAny: a few escrow functions, args checked by the ABI at run time
    mined(await wallet.writeContract({ address: chain.escrow, abi: clusterEscrowAbi, functionName, args } as any))
  return {
    account,
    address: account.address,
    wallet,
    mined,
    /** approve, then deposit(amount): the receipt of the deposit. */
    async deposit(amount: bigint): Promise<TransactionReceipt> {
      await mined(
        await wallet.writeContract({
          address: chain.usdc,
          abi: testUsdcAbi,
          functionName: 'approve',
          args: [chain.escrow, amount],
        }),
      )
      return escrow('deposit', [amount])
    },
    authorize: (cap: bigint) => escrow('authorizeGateway', [options.gateway, cap]),
    requestWithdraw: (amount: bigint) => escrow('requestWithdraw', [amount]),
    cancelWithdraw: () => escrow('cancelWithdraw'),
    withdraw: () => escrow('withdraw'),
  }
}
