// The gateway's side of the escrow contract: viem clients for one chain, the gateway's signing
// account, and typed calls. The signing key comes from the environment or a file, never the repo.
import { readFile, stat } from 'node:fs/promises'
import {
  type Account,
  type Address,
  type Chain,
  ContractFunctionExecutionError,
  ContractFunctionRevertedError,
  createPublicClient,
  createWalletClient,
  defineChain,
  getAddress,
  type Hex,
  http,
  type PublicClient,
  type Transport,
  type WalletClient,
} from 'viem'
import { privateKeyToAccount } from 'viem/accounts'
import { clusterEscrowAbi, testUsdcAbi } from './artifacts.ts'

export interface EscrowConfig {
  rpcUrl: string
  chainId: number
  usdc: string
  escrow: string
}

export class SignerKeyError extends Error {
  override name = 'SignerKeyError'
}

const KEY = /^0x[0-9a-fA-F]{64}$/

/**
 * A signing key: the environment variable `envVar` (default CLUSTER_GATEWAY_KEY), else the file
 * `file` (which must not be readable by others). Never logged; errors name where it was looked
 * for, not what was found.
 */
export async function loadSignerKey(options: {
  env: NodeJS.ProcessEnv
  file?: string | undefined
  envVar?: string
  /** What the key is for, in the error when there is none. */
  purpose?: string
}): Promise<Hex> {
  const envVar = options.envVar ?? 'CLUSTER_GATEWAY_KEY'
  const fromEnv = options.env[envVar]?.trim()
  if (fromEnv) {
    if (!KEY.test(fromEnv)) throw new SignerKeyError(`${envVar} is not 0x followed by 64 hex digits`)
    return fromEnv as Hex
  }
  if (options.file == null) {
    throw new SignerKeyError(
      `${options.purpose ?? 'on-chain settlement needs the gateway key'}: set ${envVar} or give a key file`,
    )
  }
  let text: string
  try {
    if (process.platform !== 'win32' && ((await stat(options.file)).mode & 0o077) !== 0) {
      throw new SignerKeyError(`${options.file} is readable by others: chmod 600 it`)
    }
    text = (await readFile(options.file, 'utf8')).trim()
  } catch (err) {
    if (err instanceof SignerKeyError) throw err
    throw new SignerKeyError(`cannot read the gateway key file ${options.file}: ${(err as NodeJS.ErrnoException).code}`)
  }
  if (!KEY.test(text)) throw new SignerKeyError(`${options.file} does not hold 0x followed by 64 hex digits`)
  return text as Hex
}

/** viem's description of an EVM chain known only by its RPC URL and id. */
export function chainFor(rpcUrl: string, chainId: number): Chain {
  return defineChain({
    id: chainId,
    name: `chain ${chainId}`,
    nativeCurrency: { name: 'Ether', symbol: 'ETH', decimals: 18 },
    rpcUrls: { default: { http: [rpcUrl] } },
  })
}

/** viem clients for the escrow's chain, acting as the gateway. */
export class EscrowClient {
  readonly chain: Chain
  readonly publicClient: PublicClient<Transport, Chain>
  readonly wallet: WalletClient<Transport, Chain, Account>
  readonly address: Address
  readonly escrow: Address
  readonly usdc: Address
  readonly abi = clusterEscrowAbi

  constructor(config: EscrowConfig, signerKey: Hex) {
    this.chain = chainFor(config.rpcUrl, config.chainId)
    const transport = http(config.rpcUrl, { retryCount: 2, timeout: 15_000 })
    const account = privateKeyToAccount(signerKey)
    this.address = account.address
    this.escrow = getAddress(config.escrow)
    this.usdc = getAddress(config.usdc)
    this.publicClient = createPublicClient({ chain: this.chain, transport, pollingInterval: 250 })
    this.wallet = createWalletClient({ chain: this.chain, transport, account })
  }

  /** Escrow balance (available + thawing) and the cap `payer` gave this gateway. */
  async capacity(payer: Address): Promise<{ balance: bigint; cap: bigint }> {
    const [balance, cap] = await Promise.all([
      this.publicClient.readContract({
        address: this.escrow,
        abi: clusterEscrowAbi,
        functionName: 'balanceOf',
        args: [payer],
      }),
      this.publicClient.readContract({
        address: this.escrow,
        abi: clusterEscrowAbi,
        functionName: 'gatewayCap',
        args: [payer, this.address],
      }),
    ])
    return { balance, cap }
  }

  async account(payer: Address): Promise<{ available: bigint; thawing: bigint; thawEndsAt: bigint }> {
    return this.publicClient.readContract({
      address: this.escrow,
      abi: clusterEscrowAbi,
      functionName: 'accounts',
      args: [payer],
    })
  }

  async usdcName(): Promise<{ name: string; version: string }> {
    const [name, version] = await Promise.all([
      this.publicClient.readContract({ address: this.usdc, abi: testUsdcAbi, functionName: 'name' }),
      this.publicClient
        .readContract({ address: this.usdc, abi: testUsdcAbi, functionName: 'version' })
        .catch(() => '2'),
    ])
    return { name, version }
  }

  /**
   * Sends a call and waits for it to be mined. Throws CallRefusedError when it certainly did not
   * apply (the simulation reverted, or it was mined and reverted); any other error leaves it
   * unknown whether it was mined.
   */
  async send(call: { functionName: string; args: readonly unknown[] }): Promise<{ hash: Hex; blockNumber: bigint }> {
    let request: Parameters<typeof this.wallet.writeContract>[0]
    try {
      ;({ request } = await this.publicClient.simulateContract({
        address: this.escrow,
        abi: clusterEscrowAbi,
        account: this.wallet.account,
        // biome-ignore lint/suspicious/noExplicitAny: one generic entry for the escrow's write functions
        functionName: call.functionName as any,
        // biome-ignore lint/suspicious/noExplicitAny: checked by the simulation against the ABI
        args: call.args as any,
      }))
    } catch (err) {
      if (err instanceof ContractFunctionExecutionError && err.cause instanceof ContractFunctionRevertedError) {
        throw new CallRefusedError(err.cause.data?.errorName ?? err.shortMessage, err.cause.data?.args ?? [])
      }
      throw err
    }
    const hash = await this.wallet.writeContract(request)
    const receipt = await this.publicClient.waitForTransactionReceipt({ hash })
    if (receipt.status !== 'success') throw new CallRefusedError(`transaction ${hash} reverted`, [])
    return { hash, blockNumber: receipt.blockNumber }
  }
}

/** The chain refused a call: nothing it would have done happened. */
export class CallRefusedError extends Error {
  override name = 'CallRefusedError'
  constructor(
    readonly reason: string,
    readonly args: readonly unknown[],
  ) {
    super(`refused by the contract: ${reason}`)
  }
}
