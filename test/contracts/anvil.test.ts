// Smoke test against a real chain: anvil (npm @foundry-rs/anvil) on 127.0.0.1, contracts deployed from
// src/chain/artifacts.ts with viem. The second test signs the EIP-3009 deposit and the EIP-712 gateway
// authorization in TypeScript, as wallets and gateways will; the third a signed withdrawal request.
import {
  type Address,
  createPublicClient,
  createWalletClient,
  getAddress,
  type Hex,
  http,
  keccak256,
  parseEventLogs,
  parseUnits,
} from 'viem'
import { generatePrivateKey, privateKeyToAccount } from 'viem/accounts'
import { foundry } from 'viem/chains'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type Anvil, startAnvil } from '../../scripts/contracts.ts'
import { clusterEscrowAbi, clusterEscrowBytecode, testUsdcAbi, testUsdcBytecode } from '../../src/chain/artifacts.ts'
import {
  depositNonce,
  signAuthorizeGateway,
  signGaslessDeposit,
  signRequestWithdraw,
} from '../../src/chain/typed-data.ts'

// anvil's first three accounts from the standard test mnemonic (funded with test ETH on every anvil)
const deployer = privateKeyToAccount('0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80')
const gateway = privateKeyToAccount('0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d')
const node = privateKeyToAccount('0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a')
const THAW = 3600n

let anvil: Anvil
let usdc: Address
let escrow: Address

function clients(url: string) {
  const transport = http(url)
  const publicClient = createPublicClient({ chain: foundry, transport })
  const wallet = (account: typeof deployer) => createWalletClient({ chain: foundry, transport, account })
  return { publicClient, wallet }
}

describe('contracts on anvil', () => {
  beforeAll(async () => {
    anvil = await startAnvil()
    const { publicClient, wallet } = clients(anvil.url)
    const deploy = wallet(deployer)
    const usdcReceipt = await publicClient.waitForTransactionReceipt({
      hash: await deploy.deployContract({ abi: testUsdcAbi, bytecode: testUsdcBytecode }),
    })
    usdc = getAddress(usdcReceipt.contractAddress!)
    const escrowReceipt = await publicClient.waitForTransactionReceipt({
      hash: await deploy.deployContract({ abi: clusterEscrowAbi, bytecode: clusterEscrowBytecode, args: [usdc, THAW] }),
    })
    escrow = getAddress(escrowReceipt.contractAddress!)
  })

  afterAll(async () => {
    await anvil?.stop()
  })

  it('deploys, mints, approves and deposits; the balance reads back', async () => {
    const { publicClient, wallet } = clients(anvil.url)
    const payer = wallet(deployer)
    const send = async (hash: Hex) => {
      const receipt = await publicClient.waitForTransactionReceipt({ hash })
      expect(receipt.status).toBe('success')
      return receipt
    }
    expect(await publicClient.readContract({ address: escrow, abi: clusterEscrowAbi, functionName: 'token' })).toBe(
      usdc,
    )
    expect(await publicClient.readContract({ address: usdc, abi: testUsdcAbi, functionName: 'decimals' })).toBe(6)

    const amount = parseUnits('12.5', 6)
    await send(
      await payer.writeContract({
        address: usdc,
        abi: testUsdcAbi,
        functionName: 'mint',
        args: [deployer.address, amount],
      }),
    )
    await send(
      await payer.writeContract({ address: usdc, abi: testUsdcAbi, functionName: 'approve', args: [escrow, amount] }),
    )
    const receipt = await send(
      await payer.writeContract({ address: escrow, abi: clusterEscrowAbi, functionName: 'deposit', args: [amount] }),
    )
    const [deposited] = parseEventLogs({ abi: clusterEscrowAbi, eventName: 'Deposited', logs: receipt.logs })
    expect(deposited?.args).toEqual({ payer: deployer.address, from: deployer.address, amount })

    const balance = await publicClient.readContract({
      address: escrow,
      abi: clusterEscrowAbi,
      functionName: 'balanceOf',
      args: [deployer.address],
    })
    expect(balance).toBe(amount)
    expect(
      await publicClient.readContract({ address: usdc, abi: testUsdcAbi, functionName: 'balanceOf', args: [escrow] }),
    ).toBe(amount)
  })

  it('gasless deposit and signed gateway authorization from a wallet without ETH, then settle and claim', async () => {
    const { publicClient, wallet } = clients(anvil.url)
    const payer = privateKeyToAccount(generatePrivateKey()) // holds USDC, never any ETH
    const send = async (hash: Hex) => {
      const receipt = await publicClient.waitForTransactionReceipt({ hash })
      expect(receipt.status).toBe('success')
      return receipt
    }
    const amount = parseUnits('3', 6)
    await send(
      await wallet(deployer).writeContract({
        address: usdc,
        abi: testUsdcAbi,
        functionName: 'mint',
        args: [payer.address, amount],
      }),
    )

    // EIP-3009 ReceiveWithAuthorization to the escrow; the nonce binds the beneficiary (here the payer itself).
    const salt = keccak256(new TextEncoder().encode('first deposit'))
    const nonce = depositNonce(payer.address, salt)
    expect(
      await publicClient.readContract({
        address: escrow,
        abi: clusterEscrowAbi,
        functionName: 'depositNonce',
        args: [payer.address, salt],
      }),
    ).toBe(nonce)
    const validBefore = BigInt(Math.floor(Date.now() / 1000) + 3600)
    const signature = await signGaslessDeposit(
      payer,
      { chainId: foundry.id, escrow, usdc, usdcDomain: { name: 'USD Coin', version: '2' } },
      { beneficiary: payer.address, value: amount, validAfter: 0n, validBefore, salt },
    )
    const r = signature.slice(0, 66) as Hex
    const s = `0x${signature.slice(66, 130)}` as Hex
    const v = Number.parseInt(signature.slice(130, 132), 16)
    // relayed by the gateway, which pays the gas
    await send(
      await wallet(gateway).writeContract({
        address: escrow,
        abi: clusterEscrowAbi,
        functionName: 'depositWithAuthorization',
        args: [payer.address, payer.address, amount, 0n, validBefore, salt, v, r, s],
      }),
    )

    // EIP-712 AuthorizeGateway, submitted by the gateway
    const cap = parseUnits('2', 6)
    const deadline = validBefore
    const authorization = await signAuthorizeGateway(
      payer,
      { chainId: foundry.id, escrow },
      { gateway: gateway.address, cap, nonce: 0n, deadline },
    )
    await send(
      await wallet(gateway).writeContract({
        address: escrow,
        abi: clusterEscrowAbi,
        functionName: 'authorizeGatewayWithSig',
        args: [payer.address, gateway.address, cap, deadline, authorization],
      }),
    )

    const batchId = keccak256(new TextEncoder().encode('batch 1'))
    const charge = parseUnits('1.25', 6)
    const settled = await send(
      await wallet(gateway).writeContract({
        address: escrow,
        abi: clusterEscrowAbi,
        functionName: 'settle',
        args: [batchId, [{ payer: payer.address, amount: charge }], [{ payee: node.address, amount: charge }]],
      }),
    )
    const [batch] = parseEventLogs({ abi: clusterEscrowAbi, eventName: 'BatchSettled', logs: settled.logs })
    expect(batch?.args).toEqual({ batchId, gateway: gateway.address, total: charge })
    const read = <T>(functionName: 'balanceOf' | 'earnings', who: Address) =>
      publicClient.readContract({ address: escrow, abi: clusterEscrowAbi, functionName, args: [who] }) as Promise<T>
    expect(await read('balanceOf', payer.address)).toBe(amount - charge)
    expect(await read('earnings', node.address)).toBe(charge)
    expect(
      await publicClient.readContract({
        address: escrow,
        abi: clusterEscrowAbi,
        functionName: 'gatewayCap',
        args: [payer.address, gateway.address],
      }),
    ).toBe(cap - charge)
    // the same batch again is refused
    await expect(
      publicClient.simulateContract({
        account: gateway,
        address: escrow,
        abi: clusterEscrowAbi,
        functionName: 'settle',
        args: [batchId, [{ payer: payer.address, amount: 1n }], [{ payee: node.address, amount: 1n }]],
      }),
    ).rejects.toThrow(/BatchAlreadySettled/)

    await send(await wallet(node).writeContract({ address: escrow, abi: clusterEscrowAbi, functionName: 'claim' }))
    expect(
      await publicClient.readContract({
        address: usdc,
        abi: testUsdcAbi,
        functionName: 'balanceOf',
        args: [node.address],
      }),
    ).toBe(charge)
    expect(await publicClient.getBalance({ address: payer.address })).toBe(0n)
  })

  it('a withdrawal requested by a signature from a wallet without ETH, relayed by someone else', async () => {
    const { publicClient, wallet } = clients(anvil.url)
    const payer = privateKeyToAccount(generatePrivateKey()) // never holds ETH
    const send = async (hash: Hex) => {
      const receipt = await publicClient.waitForTransactionReceipt({ hash })
      expect(receipt.status).toBe('success')
      return receipt
    }
    const amount = parseUnits('2', 6)
    const funder = wallet(deployer)
    const write = { address: usdc, abi: testUsdcAbi } as const
    await send(await funder.writeContract({ ...write, functionName: 'mint', args: [deployer.address, amount] }))
    await send(await funder.writeContract({ ...write, functionName: 'approve', args: [escrow, amount] }))
    await send(
      await funder.writeContract({
        address: escrow,
        abi: clusterEscrowAbi,
        functionName: 'depositFor',
        args: [payer.address, amount],
      }),
    )

    const nonce = await publicClient.readContract({
      address: escrow,
      abi: clusterEscrowAbi,
      functionName: 'nonces',
      args: [payer.address],
    })
    const deadline = BigInt(Math.floor(Date.now() / 1000) + 3600)
    const withdrawAmount = parseUnits('0.75', 6)
    const signature = await signRequestWithdraw(
      payer,
      { chainId: foundry.id, escrow },
      { amount: withdrawAmount, nonce, deadline },
    )
    const receipt = await send(
      await wallet(gateway).writeContract({
        address: escrow,
        abi: clusterEscrowAbi,
        functionName: 'requestWithdrawWithSig',
        args: [payer.address, withdrawAmount, deadline, signature],
      }),
    )
    const [requested] = parseEventLogs({ abi: clusterEscrowAbi, eventName: 'WithdrawRequested', logs: receipt.logs })
    const block = await publicClient.getBlock({ blockNumber: receipt.blockNumber })
    expect(requested?.args).toEqual({
      payer: payer.address,
      amount: withdrawAmount,
      thawing: withdrawAmount,
      thawEndsAt: block.timestamp + THAW,
    })
    expect(
      await publicClient.readContract({
        address: escrow,
        abi: clusterEscrowAbi,
        functionName: 'accounts',
        args: [payer.address],
      }),
    ).toEqual({ available: amount - withdrawAmount, thawing: withdrawAmount, thawEndsAt: block.timestamp + THAW })
    expect(
      await publicClient.readContract({
        address: escrow,
        abi: clusterEscrowAbi,
        functionName: 'nonces',
        args: [payer.address],
      }),
    ).toBe(nonce + 1n)
    // the same signature again is refused (its nonce is used)
    await expect(
      publicClient.simulateContract({
        account: gateway,
        address: escrow,
        abi: clusterEscrowAbi,
        functionName: 'requestWithdrawWithSig',
        args: [payer.address, withdrawAmount, deadline, signature],
      }),
    ).rejects.toThrow(/InvalidSignature/)
  })
})
