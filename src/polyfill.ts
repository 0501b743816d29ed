// Fills the gaps between Node 20 and what libp2p 3 / Helia expect (Node 22 features).
// Every entry point (CLI, tests, benches) loads this before anything imports libp2p.
import 'core-js/actual/promise/with-resolvers.js'
import { WebSocket as WsWebSocket } from 'ws'

if (typeof globalThis.WebSocket === 'undefined') {
  // @libp2p/websockets dials with the global WebSocket; Node 20 has none.
  ;(globalThis as unknown as { WebSocket: unknown }).WebSocket = WsWebSocket
}
