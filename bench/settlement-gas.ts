// Settlement gas: what ClusterEscrow.settle costs per served request when a gateway settles its requests
// one by one, or in batches of 10 and 100 aggregated off-chain to one Debit per payer and one Credit per
// payee (the contract's @dev). Measured on a devchain (anvil) from the receipts' gasUsed: the whole
// transaction (21,000 intrinsic gas and calldata included). Gas is deterministic, so one run of each is
// enough and nothing needs interleaving.
import {
  type Address,
  createPublicClient,
  createWalletClient,
  type Hex,
  http,
  keccak256,
  parseEther,
  parseUnits,
  toHex,
} from 'viem'
import { type PrivateKeyAccount, privateKeyToAccount } from 'viem/accounts'
import { clusterEscrowAbi, testUsdcAbi } from '../src/chain/artifacts.ts'
import { type DevChain, devChainViem, fundWallet, startDevChain, testAccounts } from '../src/chain/devchain.ts'
import { rng } from '../test/helpers/fixtures.ts'
import { fmt, table } from './lib.ts'

/** Requests settled at each batch size (the same requests every time). */
const REQUESTS = 100
const BATCH_SIZES = [1, 10, 100] as const
/** The realistic mix: requests from this many payers, served by this many nodes. */
const MIX_PAYERS = 10
const NODES = 3
/** Goal: one batch of 100 costs less than 1/20 of 100 single-request settlements. */
const GOAL_RATIO = 0.05

/** The price assumptions for the USD figures (override with the environment). */
const GAS_PRICE_GWEI = Number(process.env.BENCH_GAS_PRICE_GWEI ?? 0.01)
const ETH_USD = Number(process.env.BENCH_ETH_USD ?? 3000)

interface Request {
  payer: Address
  node: Address
  /** micro-USDC */
  amount: bigint
}

interface Run {
  batchSize: number
  batches: number
  gas: bigint
  calldataBytes: number
}

type Clients = ReturnType<typeof clientsFor>

function clientsFor(chain: DevChain) {
  const viemChain = devChainViem(chain)
  const transport = http(chain.rpcUrl)
  const publicClient = createPublicClient({ chain: viemChain, transport, pollingInterval: 10 })
  const wallet = (account: PrivateKeyAccount) =>
    createWalletClient({ chain: viemChain, transport, account, pollingInterval: 10 })
  return { publicClient, wallet }
}

async function mined(c: Clients, hash: Hex) {
  const receipt = await c.publicClient.waitForTransactionReceipt({ hash, pollingInterval: 10 })
  if (receipt.status !== 'success') throw new Error(`transaction ${hash} reverted`)
  return receipt
}

/** A deterministic throw-away account (same addresses every run). */
const benchAccount = (label: string) => privateKeyToAccount(keccak256(toHex(`cluster settlement-gas bench ${label}`)))

/**
 * Payers with a balance in the escrow and the gateway authorized, as in production: a funder deposits for them
 * (depositFor), each signs AuthorizeGateway (EIP-712) and the gateway relays it, so payers need no ETH. Caps are
 * finite (consumed by every settlement: one storage write per payer per batch), as a careful payer sets them.
 */
async function setUpPayers(
  chain: DevChain,
  c: Clients,
  gateway: PrivateKeyAccount,
  funder: PrivateKeyAccount,
  payers: PrivateKeyAccount[],
): Promise<void> {
  const deposit = parseUnits('100', 6)
  const total = deposit * BigInt(payers.length)
  await fundWallet(chain, funder.address, { usdc: total })
  const funderWallet = c.wallet(funder)
  await mined(
    c,
    await funderWallet.writeContract({
      address: chain.usdc,
      abi: testUsdcAbi,
      functionName: 'approve',
      args: [chain.escrow, total],
    }),
  )
  const gatewayWallet = c.wallet(gateway)
  const deadline = 2n ** 63n
  for (const payer of payers) {
    await mined(
      c,
      await funderWallet.writeContract({
        address: chain.escrow,
        abi: clusterEscrowAbi,
        functionName: 'depositFor',
        args: [payer.address, deposit],
      }),
    )
    const nonce = await c.publicClient.readContract({
      address: chain.escrow,
      abi: clusterEscrowAbi,
      functionName: 'nonces',
      args: [payer.address],
    })
    const cap = parseUnits('50', 6)
    const signature = await payer.signTypedData({
      domain: { name: 'ClusterEscrow', version: '1', chainId: chain.chainId, verifyingContract: chain.escrow },
      types: {
        AuthorizeGateway: [
          { name: 'payer', type: 'address' },
          { name: 'gateway', type: 'address' },
          { name: 'cap', type: 'uint256' },
          { name: 'nonce', type: 'uint256' },
          { name: 'deadline', type: 'uint256' },
        ],
      },
      primaryType: 'AuthorizeGateway',
      message: { payer: payer.address, gateway: gateway.address, cap, nonce, deadline },
    })
    await mined(
      c,
      await gatewayWallet.writeContract({
        address: chain.escrow,
        abi: clusterEscrowAbi,
        functionName: 'authorizeGatewayWithSig',
        args: [payer.address, gateway.address, cap, deadline, signature],
      }),
    )
  }
}

/** One Debit per payer and one Credit per payee, in order of first appearance. */
function aggregate(requests: Request[]) {
  const debits = new Map<Address, bigint>()
  const credits = new Map<Address, bigint>()
  for (const r of requests) {
    debits.set(r.payer, (debits.get(r.payer) ?? 0n) + r.amount)
    credits.set(r.node, (credits.get(r.node) ?? 0n) + r.amount)
  }
  return {
    debits: [...debits].map(([payer, amount]) => ({ payer, amount })),
    credits: [...credits].map(([payee, amount]) => ({ payee, amount })),
  }
}

let batchCounter = 0

/** Settles `requests` in batches of `batchSize`, one transaction each, and adds up their gas. */
async function settleIn(
  chain: DevChain,
  c: Clients,
  gateway: PrivateKeyAccount,
  requests: Request[],
  batchSize: number,
): Promise<Run> {
  const gatewayWallet = c.wallet(gateway)
  let gas = 0n
  let calldataBytes = 0
  let batches = 0
  for (let i = 0; i < requests.length; i += batchSize) {
    const { debits, credits } = aggregate(requests.slice(i, i + batchSize))
    const batchId = keccak256(toHex(`bench batch ${++batchCounter}`))
    const hash = await gatewayWallet.writeContract({
      address: chain.escrow,
      abi: clusterEscrowAbi,
      functionName: 'settle',
      args: [batchId, debits, credits],
    })
    const receipt = await mined(c, hash)
    const tx = await c.publicClient.getTransaction({ hash })
    gas += receipt.gasUsed
    calldataBytes += (tx.input.length - 2) / 2
    batches++
  }
  return { batchSize, batches, gas, calldataBytes }
}

/** `count` requests from `payers` (uniformly at random) served by `nodes`, priced 50–5,000 micro-USDC. */
function makeRequests(seed: number, count: number, payers: Address[], nodes: Address[]): Request[] {
  const random = rng(seed)
  const pick = <T>(items: T[]): T => items[Math.floor(random() * items.length)] as T
  return Array.from({ length: count }, () => ({
    payer: pick(payers),
    node: pick(nodes),
    amount: BigInt(50 + Math.floor(random() * 4951)),
  }))
}

/** USD for `gas` at the assumed gas price and ETH price. */
const usd = (gas: number): number => gas * GAS_PRICE_GWEI * 1e-9 * ETH_USD

export async function settlementGasBench(): Promise<void> {
  const chain = await startDevChain()
  try {
    const c = clientsFor(chain)
    const info = (await c.publicClient.request({ method: 'anvil_nodeInfo' } as never)) as { hardFork?: string }
    const [, gatewayKey, funderKey] = testAccounts()
    const gateway = privateKeyToAccount(gatewayKey!.privateKey)
    const funder = privateKeyToAccount(funderKey!.privateKey)
    await fundWallet(chain, gateway.address, { eth: parseEther('100') })
    const nodes = Array.from({ length: NODES }, (_, i) => benchAccount(`node ${i}`).address)
    const mixPayers = Array.from({ length: MIX_PAYERS }, (_, i) => benchAccount(`payer ${i}`))
    const distinctPayers = Array.from({ length: REQUESTS }, (_, i) => benchAccount(`distinct payer ${i}`))
    const started = performance.now()
    await setUpPayers(chain, c, gateway, funder, [...mixPayers, ...distinctPayers])

    // Steady state first: every payee already holds earnings and every payer has settled before, so no
    // measured settlement pays for a storage slot's first write (20,000 gas) that later ones would not.
    const everyone = [...mixPayers, ...distinctPayers].map((p, i) => ({
      payer: p.address,
      node: nodes[i % NODES] as Address,
      amount: 1n,
    }))
    await settleIn(chain, c, gateway, everyone, everyone.length)
    console.log(
      `devchain ${chain.rpcUrl} (anvil, hardfork ${info.hardFork ?? '?'}): ${MIX_PAYERS + REQUESTS} payers set up in ` +
        `${((performance.now() - started) / 1000).toFixed(1)} s; caps finite (consumed on each settlement)\n`,
    )

    const scenarios = [
      {
        name: `mix: ${MIX_PAYERS} payers, ${NODES} nodes`,
        key: 'mix',
        requests: makeRequests(
          1,
          REQUESTS,
          mixPayers.map((p) => p.address),
          nodes,
        ),
      },
      {
        name: `worst case: every request from another payer, ${NODES} nodes`,
        key: 'distinct',
        requests: distinctPayers.map((p, i) => ({
          payer: p.address,
          node: nodes[i % NODES] as Address,
          amount: 1000n,
        })),
      },
    ]
    const results: Record<string, Run[]> = {}
    for (const scenario of scenarios) {
      const runs: Run[] = []
      for (const size of BATCH_SIZES) runs.push(await settleIn(chain, c, gateway, scenario.requests, size))
      results[scenario.key] = runs
      const singles = Number(runs[0]!.gas)
      console.log(`${scenario.name}; ${REQUESTS} requests settled at each batch size`)
      table(
        ['batch size', 'txs', 'gas total', 'gas/request', 'calldata B/request', 'vs singles', 'USD/request'],
        runs.map((r) => [
          r.batchSize,
          r.batches,
          r.gas.toString(),
          fmt(Number(r.gas) / REQUESTS, 0),
          fmt(r.calldataBytes / REQUESTS, 1),
          fmt(Number(r.gas) / singles, 4),
          `$${usd(Number(r.gas) / REQUESTS).toPrecision(3)}`,
        ]),
      )
      console.log('')
    }

    console.log(
      `USD at an assumed Base L2 gas price of ${GAS_PRICE_GWEI} gwei and ETH at $${ETH_USD} (BENCH_GAS_PRICE_GWEI, ` +
        'BENCH_ETH_USD); L2 execution gas only: the L1 data fee is NOT included (it scales with the calldata ' +
        'bytes shown, compressed, at the L1 blob price of the day)\n',
    )
    const mix = results.mix!
    for (const r of mix) {
      console.log(`gas.per_request_batch${r.batchSize} = ${fmt(Number(r.gas) / REQUESTS, 0)}`)
    }
    for (const r of mix) {
      console.log(
        `gas.usd_per_request_batch${r.batchSize} = ${usd(Number(r.gas) / REQUESTS).toPrecision(3)} ` +
          `(at ${GAS_PRICE_GWEI} gwei, $${ETH_USD}/ETH, no L1 data fee)`,
      )
    }
    const ratio = Number(mix[2]!.gas) / Number(mix[0]!.gas)
    console.log(
      `gas.batch100_vs_100_singles = ${fmt(ratio, 4)} (goal < ${GOAL_RATIO}) — ${ratio < GOAL_RATIO ? 'met' : 'NOT met'}`,
    )
    const distinct = results.distinct!
    console.log(
      `gas.batch100_vs_100_singles_distinct_payers = ${fmt(Number(distinct[2]!.gas) / Number(distinct[0]!.gas), 4)} ` +
        '(worst case, no goal: nothing to aggregate across payers)',
    )
  } finally {
    await chain.stop()
  }
}
