// Staying joined to a bootstrap peer that restarts elsewhere: the same peer id (its key kept in its
// data dir) on a new port. A node given the peer's peer.json re-reads it as it redials; a node given
// only the old multiaddr finds the new one through the DHT of a peer it still has. An outage is
// told once, and its end once.
import { rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { PrivateKey } from '@libp2p/interface'
import { afterEach, describe, expect, it } from 'vitest'
import { createMeshPeer, type MeshPeer } from '../../src/mesh/peer.ts'
import { loadOrCreatePeerKey } from '../../src/mesh/peer-key.ts'
import { tempDir, waitFor } from '../helpers/fixtures.ts'

const LOOP = ['/ip4/127.0.0.1/tcp/0']
const REDIAL_MS = 200

describe('bootstrap peers that move', () => {
  const peers: MeshPeer[] = []
  const dirs: Array<{ remove: () => Promise<void> }> = []
  afterEach(async () => {
    for (const p of peers.splice(0)) await Promise.resolve(p.stop()).catch(() => undefined)
    for (const d of dirs.splice(0)) await d.remove()
  })

  const dir = async (prefix: string): Promise<string> => {
    const d = await tempDir(prefix)
    dirs.push(d)
    return d.path
  }
  const start = async (config: Parameters<typeof createMeshPeer>[0]): Promise<MeshPeer> => {
    const peer = await createMeshPeer({ listen: LOOP, ...config })
    peers.push(peer)
    return peer
  }
  const tcpPort = (p: MeshPeer): string | undefined =>
    p
      .getMultiaddrs()
      .map((a) => a.getComponents().find((c) => c.name === 'tcp')?.value)
      .find((v) => v != null)
  /** The gateway role again on the same key, on a port other than `avoid`'s. */
  const restartOn = async (dataDir: string, key: PrivateKey, avoid: string | undefined): Promise<MeshPeer> => {
    for (;;) {
      const p = await start({ dataDir, privateKey: key })
      if (tcpPort(p) !== avoid) return p
      await p.stop()
    }
  }
  const writePeerJson = async (file: string, p: MeshPeer): Promise<void> => {
    await writeFile(
      `${file}.tmp`,
      JSON.stringify({ peerId: p.peerId.toString(), multiaddrs: p.getMultiaddrs().map(String) }),
    )
    await rename(`${file}.tmp`, file)
  }
  const linked = (a: MeshPeer, b: MeshPeer): boolean =>
    a.getConnections().some((c) => c.remotePeer.equals(b.peerId) && c.status === 'open')
  const memory = () => {
    const lines: Array<{ level: 'warn' | 'info'; message: string }> = []
    return {
      lines,
      log: {
        warn: (message: string) => lines.push({ level: 'warn', message }),
        info: (message: string) => lines.push({ level: 'info', message }),
      },
    }
  }

  it('a node bootstrapped from peer.json reconnects to its gateway restarted on another port', async () => {
    const gwDir = await dir('boot-gw')
    const key = await loadOrCreatePeerKey(gwDir)
    const peerJson = join(gwDir, 'peer.json')
    const gw1 = await start({ dataDir: gwDir, privateKey: key })
    await writePeerJson(peerJson, gw1)
    const said = memory()
    const node = await start({
      dataDir: await dir('boot-node'),
      bootstrap: [peerJson],
      bootstrapRedialMs: REDIAL_MS,
      bootstrapWarnAfterMs: 4 * REDIAL_MS,
      log: said.log,
    })
    await waitFor(() => linked(node, gw1), 5_000, 'the first connection')
    const oldPort = tcpPort(gw1)

    await gw1.stop()
    // The outage is told once, however many redials fail.
    await waitFor(() => said.lines.some((l) => l.level === 'warn'), 5_000, 'the outage warning')
    await new Promise((r) => setTimeout(r, 6 * REDIAL_MS))
    expect(said.lines.filter((l) => l.level === 'warn')).toHaveLength(1)
    expect(said.lines[0]?.message).toMatch(/no bootstrap peer reachable for \d+ s \(tried .*\/tcp\/\d+\/p2p\/12D3/)

    const gw2 = await restartOn(gwDir, key, oldPort)
    expect(gw2.peerId.equals(gw1.peerId)).toBe(true)
    await writePeerJson(peerJson, gw2)
    // Within a few redials of the rewrite (waitFor fails past that bound).
    await waitFor(() => linked(node, gw2), 5 * REDIAL_MS + 2_000, 'the node to reach the gateway on its new port')
    await waitFor(() => said.lines.some((l) => l.level === 'info'), 2_000, 'the end of the outage told')
    expect(said.lines.map((l) => l.level)).toEqual(['warn', 'info'])
  })

  it('a node given only the old multiaddr finds the moved gateway through a peer it still has (DHT)', async () => {
    const gwDir = await dir('boot-gw-dht')
    const key = await loadOrCreatePeerKey(gwDir)
    const gw1 = await start({ dataDir: gwDir, privateKey: key })
    const old = gw1.getMultiaddrs().map(String)
    // Another node, joined to the gateway, and to our node.
    const other = await start({ dataDir: await dir('boot-other'), bootstrap: old, bootstrapRedialMs: REDIAL_MS })
    const node = await start({
      dataDir: await dir('boot-node-dht'),
      bootstrap: [...old, ...other.getMultiaddrs().map(String)],
      bootstrapRedialMs: REDIAL_MS,
      log: memory().log,
    })
    await waitFor(() => linked(node, gw1) && linked(node, other) && linked(other, gw1), 5_000, 'all three linked')

    const oldPort = tcpPort(gw1)
    await gw1.stop()
    await waitFor(() => !linked(node, gw1), 5_000, 'the old gateway gone')
    const gw2 = await restartOn(gwDir, key, oldPort)
    // The gateway's operator points the other node at it; ours only knows where it was.
    await other.dial(gw2.getMultiaddrs())
    await waitFor(() => linked(node, gw2), 10 * REDIAL_MS + 5_000, 'the node to find the gateway by its id')
  })
})
