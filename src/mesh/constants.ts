// Defaults of the mesh layer, in one place: each option falls back to its constant here.
// Tests shorten the intervals; production keeps these.

/** How often a node gossips its heartbeat. @default 2000 */
export const DEFAULT_HEARTBEAT_INTERVAL_MS = 2_000

/** A node is dropped from the Directory after this many missed heartbeat intervals. @default 3 */
export const LEASE_INTERVALS = 3

/** How often unconnected bootstrap peers are redialled. @default 2000 */
export const BOOTSTRAP_REDIAL_MS = 2_000

/** No bootstrap peer reachable for this long is logged, once per outage. @default 10000 */
export const BOOTSTRAP_WARN_AFTER_MS = 10_000

/** How long a capabilities fetch from a node may take. @default 5000 */
export const CAPABILITIES_FETCH_TIMEOUT_MS = 5_000

/**
 * Listen addresses when none are configured: TCP and WebSockets on loopback, on ports the system
 * picks at each start (several peers share a machine without choosing ports). A peer bootstrapped
 * from another's peer.json follows it to its new port; a mesh across machines gives fixed ones.
 */
export const DEFAULT_LISTEN = ['/ip4/127.0.0.1/tcp/0', '/ip4/127.0.0.1/tcp/0/ws']

/** The peer key file inside a data dir. */
export const PEER_KEY_FILE = 'peer.key'
