// Which peers a node takes deploy and undeploy requests from: the gateways it was told to bootstrap
// from (the /p2p/ id of a multiaddr; the peerId of a peer.json, re-read at each request as the mesh
// re-reads it at each redial), plus those the operator lists (node.trustedGateways).
import { isMultiaddrText, peerIdOfText, peerJsonIds, peerJsonReader } from '../src/mesh/bootstrap.ts'

/**
 * `trusts(peerId)`: whether a deploy request from that peer is taken. A peer.json that cannot be read
 * now (its gateway is rewriting it) counts with what it named when last read.
 */
export function deployTrust(bootstrap: readonly string[], trustedGateways: readonly string[] = []) {
  const fixed = new Set<string>(trustedGateways)
  for (const entry of bootstrap) {
    if (!isMultiaddrText(entry)) continue
    const id = peerIdOfText(entry)
    if (id != null) fixed.add(id)
  }
  const readIds = peerJsonReader(
    bootstrap.filter((e) => !isMultiaddrText(e)),
    peerJsonIds,
  )
  return async (peerId: string): Promise<boolean> => fixed.has(peerId) || (await readIds()).includes(peerId)
}
