// The `cluster` command's answers to bad input and to what it cannot reach: one line, "cluster: …",
// naming the flag or the key at fault, a non-zero exit code and never a stack. Only short commands
// here (nothing is left running); the servers they talk to are fakes on 127.0.0.1.
import { createHash } from 'node:crypto'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { tempDir } from '../helpers/fixtures.ts'
import { cluster, exited, killAll, ROOT } from '../helpers/processes.ts'

interface Run {
  code: number | null
  out: string
  err: string
}

const run = async (args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> => {
  const child = cluster(args, env)
  await exited(child)
  return { code: child.exitCode, out: child.stdoutText(), err: child.stderrText() }
}

/** One line on stderr, as given, no stack; a non-zero exit code. */
const expectOneLine = (r: Run, line: string | RegExp, code?: number): void => {
  const lines = r.err.trim().split('\n')
  expect(lines, r.err).toHaveLength(1)
  if (typeof line === 'string') expect(lines[0]).toBe(line)
  else expect(lines[0]).toMatch(line)
  expect(r.err).not.toMatch(/\n\s+at /)
  if (code != null) expect(r.code).toBe(code)
  else expect(r.code).not.toBe(0)
}

const listen = (server: Server): Promise<string> =>
  new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${(server.address() as AddressInfo).port}`)),
  )

/** A port nothing listens on. */
const closedPort = async (): Promise<number> => {
  const server = createServer()
  await listen(server)
  const { port } = server.address() as AddressInfo
  await new Promise((r) => server.close(r))
  return port
}

describe('cluster: bad input and unreachable servers', () => {
  const cleanups: Array<() => Promise<void>> = []
  const servers: Server[] = []
  let dir: string
  afterAll(async () => {
    await killAll()
    for (const s of servers) s.closeAllConnections()
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))))
    for (const c of cleanups) await c()
  })
  beforeAll(async () => {
    const d = await tempDir('cli-errors')
    cleanups.push(d.remove)
    dir = d.path
  })

  it('a misspelt config key is an error naming its path, in every section, before anything starts', async () => {
    const file = join(dir, 'typo.json')
    writeFileSync(file, JSON.stringify({ gateway: { prot: 1 } }))
    const gw = await run(['gateway', '--config', file, '--data-dir', join(dir, 'g'), '--port', '0'])
    expectOneLine(gw, `cluster: config: unknown key gateway.prot (in ${file})`, 2)
    expect(gw.out).toBe('')
    expect(existsSync(join(dir, 'g'))).toBe(false)

    const many = join(dir, 'many.json')
    writeFileSync(
      many,
      JSON.stringify({
        dataDir: join(dir, 'never'),
        gateway: { pricing: { units: { imag: '0.01' } }, rateLimit: { capacity: 1, refillPerSecond: 1, burst: 2 } },
        node: { models: [{ path: 'x.gguf', idd: 'y' }], slot: 2 },
        chain: {
          rpcUrl: 'http://127.0.0.1:1',
          chainId: 31337,
          usdc: `0x${'1'.repeat(40)}`,
          escrow: `0x${'1'.repeat(40)}`,
          confirmation: 1,
        },
        x402: { payto: `0x${'2'.repeat(40)}` },
        logLevl: 'info',
      }),
    )
    // `cluster start` refuses it before it starts anything (no chain, no data dir).
    const start = await run(['start', '--config', many])
    expectOneLine(
      start,
      /^cluster: config: unknown keys (?=.*\blogLevl\b)(?=.*\bgateway\.pricing\.units\.imag\b)(?=.*\bgateway\.rateLimit\.burst\b)(?=.*\bnode\.models\.0\.idd\b)(?=.*\bnode\.slot\b)(?=.*\bchain\.confirmation\b)(?=.*\bx402\.payto\b)/,
      2,
    )
    expect(existsSync(join(dir, 'never'))).toBe(false)

    const notObject = join(dir, 'list.json')
    writeFileSync(notObject, '[1, 2]')
    expectOneLine(
      await run(['node', '--config', notObject]),
      `cluster: config file ${notObject}: not a JSON object ({ … })`,
      2,
    )
  })

  it('accounts and models: a gateway that is down, and a --gateway that is not a URL, said plainly', async () => {
    const down = `http://127.0.0.1:${await closedPort()}`
    const credit = ['accounts', 'credit', '--email', 'a@example.com', '--amount', '1.00', '--admin-key', 'sk-x']
    expectOneLine(
      await run([...credit, '--gateway', down]),
      `cluster: cannot reach the gateway at ${down} (ECONNREFUSED): is it running? Point --gateway or --data-dir at it`,
      1,
    )
    expectOneLine(
      await run([...credit, '--gateway', 'notaurl']),
      'cluster: --gateway: not a URL: notaurl (give one like http://127.0.0.1:8787)',
      2,
    )
    const create = ['accounts', 'create', '--email', 'a@example.com', '--admin-key', 'sk-x']
    expectOneLine(
      await run([...create, '--gateway', down]),
      /^cluster: cannot reach the gateway at .+ \(ECONNREFUSED\)/,
      1,
    )
    expectOneLine(
      await run([...create, '--gateway', 'localhost:8787']),
      'cluster: --gateway: not an http(s) URL: localhost:8787 (give one like http://127.0.0.1:8787)',
      2,
    )
    // Its data dir named by the flag's help.
    const help = await run(['accounts', '--help'])
    expect(help.out).toContain('--data-dir (default: env CLUSTER_DATA_DIR, else .cluster)')
    const creditHelp = await run(['accounts', 'credit', '--help'])
    expect(creditHelp.out.replace(/\s+/g, ' ')).toContain('(default: env CLUSTER_DATA_DIR, else .cluster)')

    expectOneLine(
      await run(['models', 'ls', '--gateway', 'notaurl']),
      'cluster models ls: --gateway: not a URL: notaurl (give one like http://127.0.0.1:8787)',
      1,
    )
    expectOneLine(
      await run(['models', 'ls'], { CLUSTER_GATEWAY_URL: 'ftp://x' }),
      'cluster models ls: CLUSTER_GATEWAY_URL: not an http(s) URL: ftp://x (give one like http://127.0.0.1:8787)',
      1,
    )
    expectOneLine(
      await run(['models', 'ls', '--gateway', down]),
      new RegExp(`^cluster models ls: cannot reach the gateway at ${down} \\(ECONNREFUSED\\): is it running\\?`),
      1,
    )
  })

  it('--bootstrap: not a multiaddr and no such file, a file that is not a peer.json, a bad multiaddr', async () => {
    const node = ['node', '--data-dir', join(dir, 'n'), '--listen', '/ip4/127.0.0.1/tcp/0', '--gpu', 'off']
    expectOneLine(
      await run([...node, '--bootstrap', 'notamultiaddr']),
      `cluster: --bootstrap: notamultiaddr is not a multiaddr (such as /ip4/127.0.0.1/tcp/4001/p2p/12D3…), and no peer.json file at ${join(ROOT, 'notamultiaddr')}`,
      2,
    )
    const notJson = join(dir, 'peer-not.json')
    writeFileSync(notJson, 'not json\n')
    expectOneLine(
      await run([...node, '--bootstrap', notJson]),
      new RegExp(`^cluster: --bootstrap: ${notJson} is not a peer\\.json \\(.*JSON.*\\)$`),
      2,
    )
    const noAddrs = join(dir, 'peer-other.json')
    writeFileSync(noAddrs, JSON.stringify({ peerId: 'x' }))
    expectOneLine(
      await run(['gateway', '--data-dir', join(dir, 'g2'), '--port', '0', '--bootstrap', noAddrs]),
      `cluster: --bootstrap: ${noAddrs} is not a peer.json (no "multiaddrs" list)`,
      2,
    )
    expectOneLine(
      await run([...node, '--bootstrap', '/ip4/not-an-ip/tcp/4001']),
      /^cluster: --bootstrap: not a valid multiaddr: \/ip4\/not-an-ip\/tcp\/4001 \(.+\)$/,
      2,
    )
    expect(existsSync(join(dir, 'n', 'peer.json'))).toBe(false)
  })

  it('--seed takes whole numbers only; --model-id needs --model or --upstream', async () => {
    const out = join(dir, 'synth', 'deep', 'm.gguf')
    for (const seed of ['abc', '1.5abc', '1.5', '-1', '4294967296', '']) {
      const r = await run(['model', 'synth', '--seed', seed, '--out', out])
      expect(r.code, seed).not.toBe(0)
      expect(r.err.split('\n')[0]).toBe(
        `cluster: option '--seed <n>' argument '${seed}' is invalid. give a whole number from 0 to 4294967295`,
      )
      expect(existsSync(out)).toBe(false)
    }
    const ok = await run(['model', 'synth', '--seed', '42', '--out', out])
    expect(ok.code, ok.err).toBe(0)
    expect(ok.out).toMatch(/^wrote .+m\.gguf \(tiny, 0\.7 MiB\)/)

    expectOneLine(
      await run(['node', '--data-dir', join(dir, 'n2'), '--model-id', 'foo']),
      'cluster: --model-id names the model given with --model or --upstream: give one of those too',
      2,
    )
    expect(existsSync(join(dir, 'n2'))).toBe(false)
  })

  it('earnings: a bad escrow or address is named; an RPC that fails, or no contract, is one line', async () => {
    const escrow = `0x${'1'.repeat(40)}`
    const address = `0x${'2'.repeat(40)}`
    const down = `http://127.0.0.1:${await closedPort()}`
    expectOneLine(
      await run(['earnings', '--rpc-url', down, '--escrow', '0x1234', '--data-dir', dir]),
      'cluster earnings: --escrow: not an address: 0x1234 (0x and 40 hex digits)',
      2,
    )
    expectOneLine(
      await run(['earnings', '--rpc-url', down, '--escrow', escrow, '--address', '0xnotanaddress', '--data-dir', dir]),
      'cluster earnings: --address: not an address: 0xnotanaddress (0x and 40 hex digits)',
      2,
    )
    expectOneLine(
      await run(['earnings', '--rpc-url', 'notaurl', '--escrow', escrow, '--address', address, '--data-dir', dir]),
      'cluster earnings: --rpc-url: not an http(s) URL: notaurl',
      2,
    )
    expectOneLine(
      await run(['earnings', '--rpc-url', down, '--escrow', escrow, '--address', address, '--data-dir', dir]),
      `cluster earnings: cannot read the escrow ${escrow} at ${down}: HTTP request failed.`,
      1,
    )
    // A JSON-RPC server where the escrow address holds no contract: eth_call answers "0x".
    const rpc = createServer((req, res) => {
      let body = ''
      req.on('data', (d: Buffer) => {
        body += d.toString()
      })
      req.on('end', () => {
        const calls = JSON.parse(body) as { id: number; method: string } | Array<{ id: number; method: string }>
        const answer = (c: { id: number; method: string }) => ({
          jsonrpc: '2.0',
          id: c.id,
          result: c.method === 'eth_chainId' ? '0x7a69' : '0x',
        })
        res.setHeader('content-type', 'application/json')
        res.end(JSON.stringify(Array.isArray(calls) ? calls.map(answer) : answer(calls)))
      })
    })
    servers.push(rpc)
    const rpcUrl = await listen(rpc)
    const empty = await run([
      'earnings',
      '--rpc-url',
      rpcUrl,
      '--escrow',
      escrow,
      '--address',
      address,
      '--data-dir',
      dir,
    ])
    expectOneLine(
      empty,
      new RegExp(
        `^cluster earnings: cannot read the escrow ${escrow} at ${rpcUrl}: The contract function "earnings" returned no data`,
      ),
      1,
    )
  })

  it('models download --out into a folder that does not exist yet: it is made', async () => {
    const bytes = Buffer.from('GGUF fake weights for the download test\n'.repeat(50))
    const sha256 = createHash('sha256').update(bytes).digest('hex')
    let base = ''
    const gateway = createServer((req, res) => {
      if (req.url?.startsWith('/api/models/fake/download')) {
        res.setHeader('content-type', 'application/json')
        res.end(JSON.stringify({ url: `${base}/blob`, cid: 'bafyfake', size: bytes.length, sha256, version: 1 }))
      } else if (req.url === '/blob') res.end(bytes)
      else res.writeHead(404).end()
    })
    servers.push(gateway)
    base = await listen(gateway)
    const out = join(dir, 'not-yet', 'deeper', 'x.gguf')
    const r = await run(['models', 'download', 'fake', '--out', out, '--gateway', base])
    expect(r.code, r.err).toBe(0)
    expect(readFileSync(out).equals(bytes)).toBe(true)
    expect(existsSync(`${out}.partial`)).toBe(false)

    // A folder that cannot be made (a file is in the way): one line naming it.
    const blocked = join(dir, 'a-file')
    writeFileSync(blocked, 'x')
    const no = await run(['models', 'download', 'fake', '--out', join(blocked, 'x.gguf'), '--gateway', base])
    expectOneLine(no, `cluster models download: --out: cannot make the folder ${blocked} (EEXIST)`, 1)
  })
})
