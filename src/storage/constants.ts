// Defaults of the storage layer, in one place: each option falls back to its constant here.

/** Blocks the exporter fetches in parallel while a file is read (`cat`): the want depth. @default 64 */
export const DEFAULT_BLOCK_READ_CONCURRENCY = 64

/** Wants in flight on one provider's stream; it also bounds that stream's receive buffer. @default 64 */
export const MAX_WANTS_PER_PROVIDER = 64

/** Blocks a provider reads from its disk ahead of the one it is sending on a blocks stream. @default 4 */
export const DEFAULT_PROVIDER_READ_AHEAD = 4

/** How long a want may wait for its answer before the provider's stream is given up. @default 30000 */
export const DEFAULT_WANT_TIMEOUT_MS = 30_000

/** How long a provider that sent a block not matching its CID is not asked again. @default 600000 */
export const MISBEHAVING_PROVIDER_BAN_MS = 10 * 60_000

/** How long a routing lookup for providers of a block may take. @default 10000 */
export const FIND_PROVIDERS_TIMEOUT_MS = 10_000

/** Providers found by routing that are dialled for one block. @default 5 */
export const MAX_FOUND_PROVIDERS = 5
