// The devchain of `npm start` and the tests: anvil with TestUSDC, ClusterEscrow and Multicall3, funded
// wallets, and a state file that keeps the chain across restarts.
import { existsSync } from 'node:fs'
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { type Address, createPublicClient, getAddress, http, parseEther, parseUnits } from 'viem'
import { generatePrivateKey, mnemonicToAccount, privateKeyToAccount } from 'viem/accounts'
import { foundry } from 'viem/chains'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { clusterEscrowAbi, multicall3Abi, multicall3DeployedBytecode, testUsdcAbi } from '../../src/chain/artifacts.ts'
import {
  type DevChain,
  devChainViem,
  fundWallet,
  MULTICALL3_ADDRESS,
  startDevChain,
  testAccounts,
} from '../../src/chain/devchain.ts'

const publicClient = (chain: DevChain) =>
  createPublicClient({ chain: devChainViem(chain), transport: http(chain.rpcUrl) })

async function usdcOf(chain: DevChain, who: Address): Promise<bigint> {
  return publicClient(chain).readContract({
    address: chain.usdc,
    abi: testUsdcAbi,
    functionName: 'balanceOf',
    args: [who],
  })
}

/** Whether anything answers JSON-RPC at `url`. */
async function answers(url: string): Promise<boolean> {
  try {
    const res = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'eth_chainId', params: [] }),
    })
    return res.ok
  } catch {
    return false
  }
}

describe('testAccounts', () => {
  it("are anvil's accounts 0..9 of the standard test mnemonic, with their keys", () => {
    const accounts = testAccounts()
    expect(accounts).toHaveLength(10)
    expect(accounts[0]).toEqual({
      address: '0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266',
      privateKey: '0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80',
    })
    for (const i of [1, 9]) {
      const viaViem = mnemonicToAccount('test test test test test test test test test test test junk', {
        addressIndex: i,
      })
      expect(accounts[i]?.address).toBe(viaViem.address)
      expect(privateKeyToAccount(accounts[i]!.privateKey).address).toBe(viaViem.address)
    }
    expect(new Set(accounts.map((a) => a.address)).size).toBe(10)
  })
})

describe('startDevChain (throw-away chain)', () => {
  let chain: DevChain

  beforeAll(async () => {
    chain = await startDevChain()
  })

  afterAll(async () => {
    await chain?.stop()
  })

  it('runs anvil on 127.0.0.1 with the contracts deployed and Multicall3 at its canonical address', async () => {
    expect(chain.rpcUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)
    expect(chain.chainId).toBe(31337)
    expect(chain.multicall3).toBe(MULTICALL3_ADDRESS)
    expect(chain.thawPeriod).toBe(3600n)
    expect(chain.deployed).toBe(true)
    expect(chain.deployer).toEqual(testAccounts()[0])
    const client = publicClient(chain)
    for (const address of [chain.usdc, chain.escrow]) {
      expect((await client.getCode({ address }))?.length ?? 0).toBeGreaterThan(2)
    }
    expect(await client.getCode({ address: MULTICALL3_ADDRESS })).toBe(multicall3DeployedBytecode)
    expect(await client.readContract({ address: chain.escrow, abi: clusterEscrowAbi, functionName: 'token' })).toBe(
      chain.usdc,
    )
    expect(
      await client.readContract({ address: chain.escrow, abi: clusterEscrowAbi, functionName: 'thawPeriod' }),
    ).toBe(3600n)
  })

  it("answers viem's multicall (aggregate3) through Multicall3", async () => {
    const payer = privateKeyToAccount(generatePrivateKey()).address
    const results = await publicClient(chain).multicall({
      contracts: [
        { address: chain.usdc, abi: testUsdcAbi, functionName: 'decimals' },
        { address: chain.escrow, abi: clusterEscrowAbi, functionName: 'thawPeriod' },
        { address: chain.escrow, abi: clusterEscrowAbi, functionName: 'balanceOf', args: [payer] },
        { address: MULTICALL3_ADDRESS, abi: multicall3Abi, functionName: 'getChainId' },
        {
          address: MULTICALL3_ADDRESS,
          abi: multicall3Abi,
          functionName: 'getEthBalance',
          args: [chain.deployer.address],
        },
        // a call that reverts: reported, not thrown
        { address: chain.escrow, abi: clusterEscrowAbi, functionName: 'withdraw' },
      ],
    })
    expect(results.slice(0, 4)).toEqual([
      { status: 'success', result: 6 },
      { status: 'success', result: 3600n },
      { status: 'success', result: 0n },
      { status: 'success', result: 31337n },
    ])
    expect(results[4]).toMatchObject({ status: 'success' })
    expect((results[4] as { result: bigint }).result).toBeGreaterThan(parseEther('9000'))
    expect(results[5]?.status).toBe('failure')
    expect(String(results[5]?.error)).toMatch(/NothingThawing/)

    // the same with the address given explicitly, on viem's plain `foundry` chain (no multicall3 declared)
    const plain = createPublicClient({ chain: foundry, transport: http(chain.rpcUrl) })
    const [decimals] = await plain.multicall({
      multicallAddress: MULTICALL3_ADDRESS,
      allowFailure: false,
      contracts: [{ address: chain.usdc, abi: testUsdcAbi, functionName: 'decimals' }],
    })
    expect(decimals).toBe(6)
  })

  it('fundWallet gives a new wallet TestUSDC and ETH, and adds to what it has', async () => {
    const wallet = privateKeyToAccount(generatePrivateKey()).address
    await fundWallet(chain, wallet, { usdc: parseUnits('25', 6), eth: parseEther('1') })
    expect(await usdcOf(chain, wallet)).toBe(parseUnits('25', 6))
    expect(await publicClient(chain).getBalance({ address: wallet })).toBe(parseEther('1'))
    await fundWallet(chain, wallet, { usdc: 1n, eth: 2n })
    expect(await usdcOf(chain, wallet)).toBe(parseUnits('25', 6) + 1n)
    expect(await publicClient(chain).getBalance({ address: wallet })).toBe(parseEther('1') + 2n)
    // concurrent funding from the one deployer account: anvil orders the nonces
    const others = Array.from({ length: 5 }, () => privateKeyToAccount(generatePrivateKey()).address)
    await Promise.all(others.map((address) => fundWallet(chain, address, { usdc: 7n })))
    for (const address of others) expect(await usdcOf(chain, address)).toBe(7n)
  })
})

describe('startDevChain options', () => {
  let dir: string
  const chains: DevChain[] = []
  const track = (chain: DevChain): DevChain => {
    chains.push(chain)
    return chain
  }

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cluster-devchain-'))
  })

  afterEach(async () => {
    await Promise.all(chains.splice(0).map((chain) => chain.stop()))
  })

  afterAll(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  it('keeps the chain across a restart with the same statePath: addresses, balances, thaw period', async () => {
    const statePath = join(dir, 'persist', 'chain.json')
    const wallet = privateKeyToAccount(generatePrivateKey()).address

    const first = track(await startDevChain({ statePath, thawPeriod: 120n }))
    expect(first.deployed).toBe(true)
    expect(first.thawPeriod).toBe(120n)
    await fundWallet(first, wallet, { usdc: 4_000_000n, eth: parseEther('0.5') })
    await first.stop()
    expect(await answers(first.rpcUrl)).toBe(false)
    expect(existsSync(statePath)).toBe(true)
    const recorded = JSON.parse(await readFile(`${statePath}.json`, 'utf8'))
    expect(recorded).toMatchObject({ chainId: 31337, usdc: first.usdc, escrow: first.escrow, thawPeriod: '120' })

    // no thawPeriod given: whatever the persisted escrow has
    const second = track(await startDevChain({ statePath }))
    expect(second.deployed).toBe(false)
    expect([second.usdc, second.escrow, second.thawPeriod]).toEqual([first.usdc, first.escrow, 120n])
    expect(await usdcOf(second, wallet)).toBe(4_000_000n)
    expect(await publicClient(second).getBalance({ address: wallet })).toBe(parseEther('0.5'))
    expect(await publicClient(second).getCode({ address: MULTICALL3_ADDRESS })).toBe(multicall3DeployedBytecode)
    // and it goes on from there: one more transaction, another restart
    await fundWallet(second, wallet, { usdc: 1n })
    await second.stop()

    const third = track(await startDevChain({ statePath, thawPeriod: 120n }))
    expect(third.deployed).toBe(false)
    expect(await usdcOf(third, wallet)).toBe(4_000_001n)
  })

  it('deploys afresh when the recorded contracts are not on the chain, or have another thaw period', async () => {
    const statePath = join(dir, 'redeploy', 'chain.json')
    const first = track(await startDevChain({ statePath }))
    await first.stop()

    // the state is gone but the record is there: nothing at those addresses any more
    await rm(statePath)
    const second = track(await startDevChain({ statePath }))
    expect(second.deployed).toBe(true)
    expect(await publicClient(second).getCode({ address: second.escrow })).toMatch(/^0x[0-9a-f]{100,}/)
    await second.stop()

    // another thaw period asked for: a new escrow (and token) on the same chain
    const third = track(await startDevChain({ statePath, thawPeriod: 60n }))
    expect(third.deployed).toBe(true)
    expect(third.thawPeriod).toBe(60n)
    expect(third.escrow).not.toBe(second.escrow)
    const recorded = JSON.parse(await readFile(`${statePath}.json`, 'utf8'))
    expect(getAddress(recorded.escrow)).toBe(third.escrow)
  })

  it('moves an unreadable state file aside and starts a fresh chain', async () => {
    const statePath = join(dir, 'corrupt', 'chain.json')
    const first = track(await startDevChain({ statePath }))
    await first.stop()
    await writeFile(statePath, '{"block": ')
    const chain = track(await startDevChain({ statePath }))
    expect(chain.deployed).toBe(true)
    const files = await readdir(join(dir, 'corrupt'))
    expect(files.some((f) => f.startsWith('chain.json.unreadable-'))).toBe(true)
  })

  it('listens on the port asked for, and mines on an interval with blockTime', async () => {
    const port = await new Promise<number>((resolvePort, reject) => {
      const server = createServer()
      server.once('error', reject)
      server.listen(0, '127.0.0.1', () => {
        const address = server.address()
        server.close(() => resolvePort(typeof address === 'object' && address ? address.port : 0))
      })
    })
    const chain = track(await startDevChain({ port, blockTime: 1 }))
    expect(chain.rpcUrl).toBe(`http://127.0.0.1:${port}`)
    const wallet = privateKeyToAccount(generatePrivateKey()).address
    await fundWallet(chain, wallet, { usdc: 5n })
    expect(await usdcOf(chain, wallet)).toBe(5n)
    await chain.stop()
    expect(await answers(chain.rpcUrl)).toBe(false)
  })
})
