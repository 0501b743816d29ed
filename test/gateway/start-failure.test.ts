// A gateway that fails part-way through starting (here: no escrow at the configured RPC) releases
// everything it had opened — databases, blockstore, peer — so the same data dir starts again at once.
import { describe, expect, it } from 'vitest'
import { startGateway } from '../../gateway/gateway.ts'
import { tempDir } from '../helpers/fixtures.ts'

describe('startGateway after a failure part-way', () => {
  it('releases what it opened, so the data dir can be used again', async () => {
    const dir = await tempDir('gw-start-failure')
    try {
      const base = { dataDir: dir.path, listen: ['/ip4/127.0.0.1/tcp/0'], port: 0 }
      await expect(
        startGateway({
          ...base,
          chain: {
            rpcUrl: 'http://127.0.0.1:9', // nothing listens on the discard port
            chainId: 31337,
            usdc: '0x0000000000000000000000000000000000000001',
            escrow: '0x0000000000000000000000000000000000000002',
            signerKey: `0x${'11'.repeat(32)}`,
            confirmations: 0,
            pollIntervalMs: 1000,
            settleIntervalMs: 1000,
          },
        }),
      ).rejects.toThrow()
      // The ledger, the registry and Helia's datastore are LevelDBs: still open, they would be locked.
      const gw = await startGateway(base)
      expect((await fetch(`${gw.url}/health`)).status).toBe(200)
      await gw.stop()
    } finally {
      await dir.remove()
    }
  })
})
