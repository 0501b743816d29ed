// Which peers a node takes deploy requests from: the /p2p/ ids of its bootstrap multiaddrs, the
// peerId of a bootstrap peer.json (re-read at each request, its last good reading kept while it is
// rewritten), and node.trustedGateways; nobody else.
import { rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { deployTrust } from '../../node/trust.ts'
import { tempDir } from '../helpers/fixtures.ts'

const A = '12D3KooWGzxzKZYveHXtpG6AsrUJBcWxHBFS2HsEoGTxrMLvKXtf'
const B = '12D3KooWHFrmLWTTDD4NodngtRMEVYgxrsDMp4F9iSwYntZ9Xdhn'
const C = '12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo'
const RELAY = '12D3KooWRBy97UB99e3J6hiPesre1MZeuNQvfan4gBziswrRJsNK'
const cleanups: Array<() => Promise<void>> = []
afterAll(async () => {
  for (const c of cleanups) await c()
})

describe('deployTrust', () => {
  it('trusts bootstrap multiaddr ids (the target of a relayed one) and node.trustedGateways only', async () => {
    const trusts = deployTrust(
      [
        `/ip4/127.0.0.1/tcp/4001/p2p/${A}`,
        `/ip4/1.2.3.4/tcp/4001/p2p/${RELAY}/p2p-circuit/p2p/${B}`,
        '/ip4/1.2.3.4/tcp/1',
      ],
      [C],
    )
    expect(await trusts(A)).toBe(true)
    expect(await trusts(B)).toBe(true)
    expect(await trusts(C)).toBe(true)
    expect(await trusts(RELAY)).toBe(false)
  })

  it('reads the peerId of a bootstrap peer.json at each request; a broken rewrite keeps the last one', async () => {
    const dir = await tempDir('trust')
    cleanups.push(dir.remove)
    const file = join(dir.path, 'peer.json')
    await writeFile(file, JSON.stringify({ peerId: A, multiaddrs: ['/ip4/127.0.0.1/tcp/4001'] }))
    const trusts = deployTrust([file])
    expect(await trusts(A)).toBe(true)
    expect(await trusts(B)).toBe(false)
    await writeFile(file, JSON.stringify({ peerId: B, multiaddrs: [] }))
    expect(await trusts(B)).toBe(true)
    expect(await trusts(A)).toBe(false)
    await writeFile(file, '{"peerId": ')
    expect(await trusts(B)).toBe(true)
    await rm(file)
    expect(await trusts(B)).toBe(true)
    expect(await trusts(C)).toBe(false)
  })
})
