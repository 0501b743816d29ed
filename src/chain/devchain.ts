// A local chain for `npm start` and tests: anvil on 127.0.0.1 (chain id 31337) with TestUSDC and ClusterEscrow
// deployed by anvil's account 0, and Multicall3 at its canonical address (viem's `multicall` and x402's
// diagnostics look for it there; a fresh anvil has none). With a state path the chain outlives restarts:
// anvil loads the file at start and dumps it on exit, and the contracts found there are used again.
import { createHash, pbkdf2Sync } from 'node:crypto'
import { existsSync } from 'node:fs'
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import {
  type Address,
  type Chain,
  createPublicClient,
  createTestClient,
  createWalletClient,
  defineChain,
  getAddress,
  type Hex,
  http,
  isAddress,
  type PublicClient,
  toHex,
} from 'viem'
import { HDKey, hdKeyToAccount } from 'viem/accounts'
import { foundry } from 'viem/chains'
import { type Anvil, startAnvil } from './anvil.ts'
import {
  clusterEscrowAbi,
  clusterEscrowBytecode,
  multicall3DeployedBytecode,
  testUsdcAbi,
  testUsdcBytecode,
} from './artifacts.ts'

/** Where Multicall3 lives on every public chain, and on the devchain. */
export const MULTICALL3_ADDRESS = '0xcA11bde05977b3631167028862bE2a173976CA11'

/** The chain id of the devchain (anvil's default, viem's `foundry`). */
export const DEVCHAIN_ID = 31337

/** Anvil's (and Hardhat's) well-known test mnemonic: its accounts are public, for local chains only. */
const TEST_MNEMONIC = 'test test test test test test test test test test test junk'

const DEFAULT_THAW_PERIOD = 3600n

export interface DevChain {
  /** http://127.0.0.1:<port> */
  rpcUrl: string
  chainId: number
  /** TestUSDC (6 decimals, EIP-3009, anyone may mint). */
  usdc: Address
  /** ClusterEscrow over `usdc`. */
  escrow: Address
  /** MULTICALL3_ADDRESS. */
  multicall3: Address
  /** The escrow's thaw period in seconds. */
  thawPeriod: bigint
  /** Anvil's account 0, which deployed the contracts (holds 10,000 test ETH on a fresh chain). */
  deployer: { address: Address; privateKey: Hex }
  /** true if the contracts were deployed by this start, false if they were found in the loaded state. */
  deployed: boolean
  /** Stops anvil (with a state path: after it has written the state) and waits for it to exit. */
  stop(): Promise<void>
}

export interface DevChainOptions {
  /** File anvil loads its state from (if it exists) and dumps it to on exit; omit for a throw-away chain. */
  statePath?: string
  /** Port on 127.0.0.1; 0 (the default) lets the OS pick a free one. */
  port?: number
  /** The escrow's thaw period for a fresh deployment (default 3600 s). A persisted escrow with another
   *  period is not reused: fresh contracts are deployed. */
  thawPeriod?: bigint
  /** Seconds between blocks (interval mining); default: a block per transaction (automine). */
  blockTime?: number
}

/** What `<statePath>.json` holds: the contracts deployed on the persisted chain. */
interface Deployment {
  chainId: number
  usdc: Address
  escrow: Address
  thawPeriod: string
  /** sha256 of the creation bytecode of each, so a change of the contracts' code deploys them afresh. */
  code: { usdc: string; escrow: string }
}

let accounts: Array<{ address: Address; privateKey: Hex }> | undefined

/**
 * Anvil's accounts 0..9, derived from the standard test mnemonic (m/44'/60'/0'/0/i) with their private keys:
 * the accounts every anvil funds with 10,000 test ETH. Public knowledge: never use them on a real chain.
 */
export function testAccounts(): Array<{ address: Address; privateKey: Hex }> {
  if (!accounts) {
    // The BIP-39 seed once (PBKDF2-HMAC-SHA512, 2048 rounds, salt "mnemonic"), then each BIP-44 path with
    // viem's hdKeyToAccount: the same keys as viem's mnemonicToAccount, which would redo the seed per account.
    const seed = pbkdf2Sync(TEST_MNEMONIC.normalize('NFKD'), 'mnemonic', 2048, 64, 'sha512')
    const root = HDKey.fromMasterSeed(seed)
    accounts = Array.from({ length: 10 }, (_, addressIndex) => {
      const account = hdKeyToAccount(root, { addressIndex })
      const key = account.getHdKey().privateKey
      if (!key) throw new Error('test account without a private key')
      return { address: account.address, privateKey: toHex(key) }
    })
  }
  return accounts.map((account) => ({ ...account }))
}

/** viem's chain for a devchain: `foundry` at its URL, with Multicall3 declared (so `multicall` finds it). */
export function devChainViem(chain: Pick<DevChain, 'rpcUrl' | 'chainId' | 'multicall3'>): Chain {
  return defineChain({
    ...foundry,
    id: chain.chainId,
    rpcUrls: { default: { http: [chain.rpcUrl] } },
    contracts: { multicall3: { address: chain.multicall3, blockCreated: 0 } },
  })
}

function clients(rpcUrl: string, chainId = DEVCHAIN_ID) {
  const chain = devChainViem({ rpcUrl, chainId, multicall3: MULTICALL3_ADDRESS })
  const transport = http(rpcUrl)
  // Anvil answers at once: poll receipts often rather than every 4 s (viem's default without a block time).
  const pollingInterval = 50
  const [deployer] = testAccounts()
  return {
    publicClient: createPublicClient({ chain, transport, pollingInterval }),
    // anvil holds account 0 unlocked, fills in its nonce and signs for it (sends are serialized: see below)
    deployerWallet: createWalletClient({ chain, transport, pollingInterval, account: deployer!.address }),
    testClient: createTestClient({ chain, transport, pollingInterval, mode: 'anvil' }),
  }
}

type Clients = ReturnType<typeof clients>

/** Sends from the deployer under way, per chain URL: anvil gives two concurrent sends the same nonce. */
const sendQueues = new Map<string, Promise<unknown>>()

/** Runs `send` after every earlier send to the same chain from this process has been accepted. */
function serialized<T>(rpcUrl: string, send: () => Promise<T>): Promise<T> {
  const run = (sendQueues.get(rpcUrl) ?? Promise.resolve()).then(send, send)
  const tail = run.catch(() => undefined)
  sendQueues.set(rpcUrl, tail)
  void tail.then(() => {
    if (sendQueues.get(rpcUrl) === tail) sendQueues.delete(rpcUrl)
  })
  return run
}

const sha256 = (hex: string): string => createHash('sha256').update(hex).digest('hex')

async function waitForSuccess(publicClient: PublicClient, hash: Hex, what: string) {
  const receipt = await publicClient.waitForTransactionReceipt({ hash })
  if (receipt.status !== 'success') throw new Error(`devchain: ${what} reverted (tx ${hash})`)
  return receipt
}

async function deploy(c: Clients, thawPeriod: bigint): Promise<Deployment> {
  const usdcReceipt = await waitForSuccess(
    c.publicClient,
    await c.deployerWallet.deployContract({ abi: testUsdcAbi, bytecode: testUsdcBytecode }),
    'deploying TestUSDC',
  )
  const usdc = getAddress(usdcReceipt.contractAddress!)
  const escrowReceipt = await waitForSuccess(
    c.publicClient,
    await c.deployerWallet.deployContract({
      abi: clusterEscrowAbi,
      bytecode: clusterEscrowBytecode,
      args: [usdc, thawPeriod],
    }),
    'deploying ClusterEscrow',
  )
  return {
    chainId: DEVCHAIN_ID,
    usdc,
    escrow: getAddress(escrowReceipt.contractAddress!),
    thawPeriod: thawPeriod.toString(),
    code: { usdc: sha256(testUsdcBytecode), escrow: sha256(clusterEscrowBytecode) },
  }
}

/** The deployment recorded next to the state, if it is still on the chain as recorded; else undefined. */
async function findDeployment(c: Clients, file: string, thawPeriod: bigint | undefined) {
  let recorded: Deployment
  try {
    recorded = JSON.parse(await readFile(file, 'utf8')) as Deployment
  } catch {
    return undefined
  }
  if (
    recorded.chainId !== DEVCHAIN_ID ||
    !isAddress(recorded.usdc) ||
    !isAddress(recorded.escrow) ||
    recorded.code?.usdc !== sha256(testUsdcBytecode) ||
    recorded.code?.escrow !== sha256(clusterEscrowBytecode)
  ) {
    return undefined
  }
  const [usdcCode, escrowCode] = await Promise.all([
    c.publicClient.getCode({ address: recorded.usdc }),
    c.publicClient.getCode({ address: recorded.escrow }),
  ])
  if (!usdcCode || usdcCode === '0x' || !escrowCode || escrowCode === '0x') return undefined
  const [token, period] = await Promise.all([
    c.publicClient.readContract({ address: recorded.escrow, abi: clusterEscrowAbi, functionName: 'token' }),
    c.publicClient.readContract({ address: recorded.escrow, abi: clusterEscrowAbi, functionName: 'thawPeriod' }),
  ])
  if (getAddress(token) !== getAddress(recorded.usdc)) return undefined
  if (thawPeriod !== undefined && period !== thawPeriod) return undefined
  return { ...recorded, thawPeriod: period.toString() }
}

async function writeJsonAtomically(file: string, value: unknown): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`
  await writeFile(tmp, `${JSON.stringify(value, null, 2)}\n`)
  await rename(tmp, file)
}

/** Starts anvil with `args`; a state file anvil cannot read is moved aside (with a warning) and the chain starts fresh. */
async function startWithState(args: string[], statePath: string | undefined): Promise<Anvil> {
  const stateArgs = statePath ? ['--state', statePath] : []
  try {
    return await startAnvil([...args, ...stateArgs])
  } catch (error) {
    if (!statePath || !existsSync(statePath) || !/'--state <PATH>'/.test(String(error))) throw error
    const aside = `${statePath}.unreadable-${Date.now()}`
    await rename(statePath, aside)
    process.emitWarning(`devchain: anvil could not load ${statePath}; moved it to ${aside} and started a fresh chain`)
    return startAnvil([...args, ...stateArgs])
  }
}

/**
 * Starts the local chain: anvil on 127.0.0.1 (chain id 31337, the standard test mnemonic), TestUSDC and
 * ClusterEscrow(usdc, thawPeriod) deployed from account 0, Multicall3's runtime code at MULTICALL3_ADDRESS.
 *
 * With `statePath`, anvil loads the chain from that file if it exists and writes it back on exit (stop(),
 * SIGTERM, SIGINT), and the contract addresses are kept in `<statePath>.json`: when the code is still at
 * those addresses (and is the current build), the contracts are used as they are, balances included;
 * otherwise fresh ones are deployed.
 */
export async function startDevChain(opts: DevChainOptions = {}): Promise<DevChain> {
  const statePath = opts.statePath ? resolve(opts.statePath) : undefined
  if (statePath) await mkdir(dirname(statePath), { recursive: true })
  const args = ['--chain-id', String(DEVCHAIN_ID), '--mnemonic', TEST_MNEMONIC]
  if (opts.port !== undefined) args.push('--port', String(opts.port))
  if (opts.blockTime !== undefined) args.push('--block-time', String(opts.blockTime))
  const anvil = await startWithState(args, statePath)
  try {
    const c = clients(anvil.url)
    const chainId = await c.publicClient.getChainId()
    if (chainId !== DEVCHAIN_ID) throw new Error(`devchain: anvil reports chain id ${chainId}, not ${DEVCHAIN_ID}`)
    const deploymentFile = statePath ? `${statePath}.json` : undefined
    const found = deploymentFile ? await findDeployment(c, deploymentFile, opts.thawPeriod) : undefined
    const deployment = found ?? (await deploy(c, opts.thawPeriod ?? DEFAULT_THAW_PERIOD))
    if (!found && deploymentFile) await writeJsonAtomically(deploymentFile, deployment)
    // Runtime code only (no constructor runs): Multicall3 has no immutables and no storage.
    await c.testClient.setCode({ address: MULTICALL3_ADDRESS, bytecode: multicall3DeployedBytecode })
    const [deployer] = testAccounts()
    return {
      rpcUrl: anvil.url,
      chainId,
      usdc: deployment.usdc,
      escrow: deployment.escrow,
      multicall3: MULTICALL3_ADDRESS,
      thawPeriod: BigInt(deployment.thawPeriod),
      deployer: deployer!,
      deployed: !found,
      stop: () => anvil.stop(),
    }
  } catch (error) {
    await anvil.stop()
    throw error
  }
}

/**
 * Gives `address` test money on the devchain: `usdc` more TestUSDC (minted by the deployer; base units,
 * 6 decimals) and `eth` more wei (anvil_setBalance to its balance plus `eth`). Resolves once both are on the
 * chain. Concurrent calls in one process are fine (the mints are sent one after the other); sending from the
 * deployer account elsewhere at the same time can collide on its nonce, so use other accounts for that.
 */
export async function fundWallet(
  chain: DevChain,
  address: Address,
  opts: { usdc?: bigint; eth?: bigint },
): Promise<void> {
  const c = clients(chain.rpcUrl, chain.chainId)
  const tasks: Promise<unknown>[] = []
  if (opts.usdc !== undefined && opts.usdc > 0n) {
    const usdc = opts.usdc
    tasks.push(
      serialized(chain.rpcUrl, () =>
        c.deployerWallet.writeContract({
          address: chain.usdc,
          abi: testUsdcAbi,
          functionName: 'mint',
          args: [address, usdc],
        }),
      ).then((hash) => waitForSuccess(c.publicClient, hash, 'minting TestUSDC')),
    )
  }
  if (opts.eth !== undefined && opts.eth > 0n) {
    const eth = opts.eth
    tasks.push(
      c.publicClient
        .getBalance({ address })
        .then((balance) => c.testClient.setBalance({ address, value: balance + eth })),
    )
  }
  await Promise.all(tasks)
}
