// Which peers a node takes deploy and undeploy requests from: the gateways it was told to bootstrap
// from (the /p2p/ id of a multiaddr; the peerId of a peer.json, re-read at each request as the mesh
// re-reads it at each redial), plus those the operator lists (node.trustedGateways).
import { readFile } from 'node:fs/promises'
import { multiaddr } from '@multiformats/multiaddr'
import { isMultiaddrText } from '../src/mesh/bootstrap.ts'

/** The peer id an address leads to (the last /p2p/: a relayed address names its relay first). */
function peerIdOfAddr(text: string): string | undefined {
  try {
    return multiaddr(text)
      .getComponents()
      .findLast((c) => c.name === 'p2p')?.value
  } catch {
    return undefined
  }
}

/** The peer ids a peer.json names: its peerId and the /p2p/ ids of its multiaddrs. */
function peerIdsOfPeerJson(text: string): string[] {
  const json = JSON.parse(text) as { peerId?: unknown; multiaddrs?: unknown } | null
  const out: string[] = []
  if (typeof json?.peerId === 'string' && json.peerId !== '') out.push(json.peerId)
  if (Array.isArray(json?.multiaddrs)) {
    for (const m of json.multiaddrs) {
      const id = typeof m === 'string' ? peerIdOfAddr(m) : undefined
      if (id != null) out.push(id)
    }
  }
  return out
}

/**
 * `trusts(peerId)`: whether a deploy request from that peer is taken. A peer.json that cannot be read
 * now (its gateway is rewriting it) counts with what it named when last read.
 */
export function deployTrust(bootstrap: readonly string[], trustedGateways: readonly string[] = []) {
  const fixed = new Set<string>(trustedGateways)
  for (const entry of bootstrap) {
    if (!isMultiaddrText(entry)) continue
    const id = peerIdOfAddr(entry)
    if (id != null) fixed.add(id)
  }
  const files = bootstrap.filter((e) => !isMultiaddrText(e))
  const lastRead = new Map<string, string[]>()
  return async (peerId: string): Promise<boolean> => {
    if (fixed.has(peerId)) return true
    for (const file of files) {
      try {
        lastRead.set(file, peerIdsOfPeerJson(await readFile(file, 'utf8')))
      } catch {
        // Being rewritten, or gone while its gateway restarts: what it said last still stands.
      }
      if (lastRead.get(file)?.includes(peerId)) return true
    }
    return false
  }
}
