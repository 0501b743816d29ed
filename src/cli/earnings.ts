// `cluster earnings`: what a node's payout address has earned in the escrow, and claiming it.
import { readFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { type Address, createPublicClient, createWalletClient, getAddress, type Hex, http, isAddress } from 'viem'
import { privateKeyToAccount } from 'viem/accounts'
import { clusterEscrowAbi } from '../chain/artifacts.ts'
import { chainFor, loadSignerKey, SignerKeyError } from '../chain/escrow.ts'
import type { Config } from '../config/config.ts'
import { formatUsd } from '../payments/money.ts'
import { oneLine } from './errors.ts'

export interface EarningsOptions {
  address?: string | undefined
  claim: boolean
  keyFile?: string | undefined
  rpcUrl?: string | undefined
  escrow?: string | undefined
}

interface DevChain {
  rpcUrl?: string
  escrow?: string
  nodePayoutAddress?: string
}

async function devChain(dataDir: string): Promise<DevChain> {
  try {
    const dev = JSON.parse(await readFile(join(resolve(dataDir), 'dev.json'), 'utf8')) as { chain?: DevChain }
    return dev.chain ?? {}
  } catch {
    return {}
  }
}

/** Prints the earnings (and claims them with --claim); returns the exit code. */
export async function earnings(config: Config, options: EarningsOptions): Promise<number> {
  const fail = (message: string): number => {
    process.stderr.write(`cluster earnings: ${message}\n`)
    return 2
  }
  const dev = await devChain(config.dataDir)
  const rpcUrl = options.rpcUrl ?? config.chain?.rpcUrl ?? dev.rpcUrl
  const escrowText = options.escrow ?? config.chain?.escrow ?? dev.escrow
  if (rpcUrl == null || escrowText == null) {
    return fail('which chain? give --rpc-url and --escrow (or a config with a chain section, or run npm start first)')
  }
  if (!/^https?:\/\/[^/]/.test(rpcUrl) || !URL.canParse(rpcUrl)) {
    return fail(`--rpc-url: not an http(s) URL: ${rpcUrl}`)
  }
  if (!isAddress(escrowText, { strict: false })) {
    return fail(`--escrow: not an address: ${escrowText} (0x and 40 hex digits)`)
  }
  let key: Hex | undefined
  if (options.claim) {
    try {
      key = await loadSignerKey({
        env: process.env,
        file: options.keyFile,
        envVar: 'CLUSTER_PAYOUT_KEY',
        purpose: 'claiming needs the payout key',
      })
    } catch (err) {
      if (err instanceof SignerKeyError) return fail(err.message)
      throw err
    }
  }
  const signer = key != null ? privateKeyToAccount(key) : undefined
  const addressText = options.address ?? signer?.address ?? dev.nodePayoutAddress
  if (addressText == null) return fail('whose earnings? give --address 0x…')
  if (!isAddress(addressText, { strict: false })) {
    return fail(`--address: not an address: ${addressText} (0x and 40 hex digits)`)
  }
  const address: Address = getAddress(addressText)
  if (signer != null && signer.address !== address) return fail(`the key is ${signer.address}'s, not ${address}'s`)
  const escrow = getAddress(escrowText)
  const transport = http(rpcUrl)
  const publicClient = createPublicClient({ transport })
  let claimable: bigint
  try {
    claimable = await publicClient.readContract({
      address: escrow,
      abi: clusterEscrowAbi,
      functionName: 'earnings',
      args: [address],
    })
  } catch (err) {
    // viem's own message is a screenful (request, arguments, docs, version): its short one says it.
    process.stderr.write(`cluster earnings: cannot read the escrow ${escrow} at ${rpcUrl}: ${oneLine(err)}\n`)
    return 1
  }
  process.stdout.write(`${address}: ${formatUsd(claimable)} USDC claimable (${claimable} units) in escrow ${escrow}\n`)
  if (!options.claim) return 0
  if (claimable === 0n) {
    process.stdout.write('nothing to claim\n')
    return 0
  }
  let hash: Hex
  let receipt: Awaited<ReturnType<typeof publicClient.waitForTransactionReceipt>>
  try {
    const chain = chainFor(rpcUrl, await publicClient.getChainId())
    const wallet = createWalletClient({ transport, account: signer as NonNullable<typeof signer>, chain })
    hash = await wallet.writeContract({ address: escrow, abi: clusterEscrowAbi, functionName: 'claim' })
    receipt = await publicClient.waitForTransactionReceipt({ hash })
  } catch (err) {
    process.stderr.write(`cluster earnings: the claim failed: ${oneLine(err)}\n`)
    return 1
  }
  if (receipt.status !== 'success') return fail(`the claim ${hash} reverted`)
  process.stdout.write(`claimed ${formatUsd(claimable)} USDC to ${address} (tx ${hash})\n`)
  return 0
}
