// /ws/admin: a live feed of the mesh for monitors. A client connects, sends
// {"type":"auth","token":"sk-cluster-…"} (an admin key) and then receives JSON events — node
// heartbeats, joins and leaves, completed inferences (through any gateway), model deployments —
// all taken from gossip. Bounded: a client that does not keep up is closed, not buffered without
// end, and each key may hold only a few connections. A key revoked (or whose account is no longer
// an admin) loses its sockets: at once when revoked through the API, else at the next re-check.
import { randomUUID } from 'node:crypto'
import type { IncomingMessage, Server } from 'node:http'
import type { Duplex } from 'node:stream'
import { type RawData, type WebSocket, WebSocketServer } from 'ws'
import {
  ADMIN_CLOSE,
  type AdminClientMessage,
  AdminClientMessageSchema,
  type AdminEvent,
  type AdminEventType,
  type ClusterEvent,
} from '../protocols/index.ts'
import type { Directory, DirectoryEvents } from '../src/mesh/directory.ts'
import type { Accounts } from './accounts.ts'

export const ADMIN_WS_PATH = '/ws/admin'

export interface AdminFeedOptions {
  accounts: Accounts
  directory: Directory
  /** Time a client has to authenticate. @default 5000 */
  authTimeoutMs?: number
  /** Unsent bytes a client may fall behind by before it is closed. @default 1 MiB */
  maxBufferedBytes?: number
  /** Connections one API key may hold at once. @default 8 */
  maxConnectionsPerKey?: number
  /** Largest message a client may send. @default 4 KiB */
  maxMessageBytes?: number
  /** How often each socket's key and role are checked again (revocations outside the API). @default 5000 */
  recheckMs?: number
}

interface Client {
  socket: WebSocket
  authDeadline?: NodeJS.Timeout
  keyId?: string
  accountId?: string
  filter?: ReadonlySet<AdminEventType>
}

type Payload<T extends AdminEventType> = Omit<Extract<AdminEvent, { type: T }>, 'id' | 'timestamp' | 'type'>

export class AdminFeed {
  private readonly wss: WebSocketServer
  private readonly clients = new Set<Client>()
  private readonly perKey = new Map<string, number>()
  private readonly off: Array<() => void> = []
  private readonly authTimeoutMs: number
  private readonly maxBufferedBytes: number
  private readonly maxConnectionsPerKey: number
  private readonly recheck: NodeJS.Timeout
  private rechecking = false
  /** Events sent and clients dropped for being slow: for tests and metrics. */
  readonly stats = { sent: 0, droppedSlow: 0 }

  constructor(private readonly o: AdminFeedOptions) {
    this.authTimeoutMs = o.authTimeoutMs ?? 5000
    this.maxBufferedBytes = o.maxBufferedBytes ?? 1024 * 1024
    this.maxConnectionsPerKey = o.maxConnectionsPerKey ?? 8
    this.wss = new WebSocketServer({ noServer: true, maxPayload: o.maxMessageBytes ?? 4096 })
    this.wss.on('connection', (socket) => this.accept(socket))
    this.recheck = setInterval(() => void this.recheckKeys(), o.recheckMs ?? 5000)
    this.recheck.unref()
    const d = o.directory
    const on = <E extends keyof DirectoryEvents>(event: E, listener: (...args: DirectoryEvents[E]) => void) => {
      d.on(event, listener as never)
      this.off.push(() => d.off(event, listener as never))
    }
    on('node:joined', (entry) =>
      this.emit('node:joined', {
        nodeId: entry.peerId,
        incarnation: entry.incarnation,
        models: entry.heartbeat.models,
      }),
    )
    on('node:heartbeat', (entry) =>
      this.emit('node:heartbeat', {
        nodeId: entry.peerId,
        incarnation: entry.incarnation,
        models: entry.heartbeat.models,
        load: entry.heartbeat.load,
      }),
    )
    on('node:left', (left) =>
      this.emit('node:left', { nodeId: left.peerId, incarnation: left.incarnation, reason: left.reason }),
    )
    on('deployment', (evt) =>
      this.emit(evt.type, {
        modelId: evt.model.id,
        ...(evt.model.cid != null ? { cid: evt.model.cid } : {}),
        ...(evt.model.version != null ? { version: evt.model.version } : {}),
        nodeId: evt.peerId,
      }),
    )
  }

  /** An inference finished somewhere in the mesh (gossip), or here (`gateway` is this one). */
  inference(event: Extract<ClusterEvent, { type: 'inference:complete' }>, gateway: string): void {
    this.emit('inference:complete', {
      requestId: event.requestId,
      model: event.model,
      nodeId: event.nodePeerId,
      gateway,
      tokens: event.usage,
      finishReason: event.finishReason,
      ttftMs: event.ttftMs,
      latencyMs: event.durationMs,
      payer: event.payer ?? 'unknown',
      ...(event.provider != null ? { provider: event.provider } : {}),
      ...(event.endpoint != null ? { endpoint: event.endpoint } : {}),
    })
  }

  /** A routing candidate this gateway cooled down after a failure. */
  cooldown(payload: Payload<'route:cooldown'>): void {
    this.emit('route:cooldown', payload)
  }

  /** Routes HTTP upgrades for /ws/admin on `server` to this feed; other paths are refused. */
  attach(server: Server): void {
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      const path = new URL(req.url ?? '/', 'http://x').pathname
      if (path !== ADMIN_WS_PATH) {
        socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n')
        return
      }
      this.wss.handleUpgrade(req, socket, head, (ws) => this.wss.emit('connection', ws, req))
    })
  }

  get connections(): number {
    return this.clients.size
  }

  /** A key was revoked: its sockets are closed now (1008) and get no further event. */
  revoked(keyId: string): void {
    for (const client of this.clients) {
      if (client.keyId === keyId) this.refuse(client, 'the API key was revoked')
    }
  }

  /** Closes the sockets whose key is no longer live, or whose account is no longer an admin. */
  async recheckKeys(): Promise<void> {
    if (this.rechecking) return
    this.rechecking = true
    try {
      const { ledger } = this.o.accounts
      for (const client of [...this.clients]) {
        if (client.keyId == null || client.accountId == null) continue
        const [account, keys] = await Promise.all([
          ledger.getAccount(client.accountId),
          ledger.listKeys(client.accountId),
        ])
        if (!this.clients.has(client)) continue
        const key = keys.find((k) => k.id === client.keyId)
        if (key == null || key.revokedAt != null) this.refuse(client, 'the API key was revoked')
        else if (account?.role !== 'admin') this.refuse(client, 'the account is no longer an admin', 'FORBIDDEN')
      }
    } catch {
      // A ledger that is closing: the next round checks again.
    } finally {
      this.rechecking = false
    }
  }

  close(): void {
    clearInterval(this.recheck)
    for (const off of this.off.splice(0)) off()
    for (const c of this.clients) c.socket.close(ADMIN_CLOSE.goingAway, 'gateway stopping')
    this.clients.clear()
    this.wss.close()
  }

  private emit<T extends AdminEventType>(type: T, payload: Payload<T>): void {
    if (this.clients.size === 0) return
    const text = JSON.stringify({ type, id: randomUUID(), timestamp: new Date().toISOString(), ...payload })
    for (const client of this.clients) {
      if (client.keyId == null || (client.filter != null && !client.filter.has(type))) continue
      if (client.socket.bufferedAmount + text.length > this.maxBufferedBytes) {
        this.stats.droppedSlow++
        this.drop(client, ADMIN_CLOSE.tooSlow, 'too slow: events were not read in time')
        continue
      }
      client.socket.send(text)
      this.stats.sent++
    }
  }

  private accept(socket: WebSocket): void {
    const client: Client = { socket }
    this.clients.add(client)
    const deadline = setTimeout(
      () => this.refuse(client, 'no auth message within the time allowed'),
      this.authTimeoutMs,
    )
    socket.on('message', (data: RawData, isBinary: boolean) => {
      void this.onMessage(client, data, isBinary).catch(() => this.refuse(client, 'internal error'))
    })
    socket.on('close', () => {
      clearTimeout(deadline)
      this.forget(client)
    })
    socket.on('error', () => this.forget(client))
    client.authDeadline = deadline
  }

  private async onMessage(client: Client, data: RawData, isBinary: boolean): Promise<void> {
    let message: AdminClientMessage
    try {
      if (isBinary) throw new Error('binary')
      const parsed = AdminClientMessageSchema.safeParse(JSON.parse(data.toString()))
      if (!parsed.success) throw new Error('schema')
      message = parsed.data
    } catch {
      return this.refuse(client, 'messages are JSON: {"type":"auth","token":…} or {"type":"filter","events":[…]}')
    }
    if (message.type === 'filter') {
      if (client.keyId == null) return this.refuse(client, 'authenticate first')
      client.filter = new Set(message.events)
      client.socket.send(JSON.stringify({ type: 'filtered', events: message.events }))
      return
    }
    if (client.keyId != null) return
    const auth = await this.o.accounts.authenticate(message.token)
    if (auth == null) return this.refuse(client, 'invalid API key')
    if (auth.account.role !== 'admin')
      return this.refuse(client, 'only admin keys may watch cluster events', 'FORBIDDEN')
    if (client.socket.readyState !== client.socket.OPEN) return
    const held = this.perKey.get(auth.key.id) ?? 0
    if (held >= this.maxConnectionsPerKey) {
      return this.drop(client, ADMIN_CLOSE.tooMany, `at most ${this.maxConnectionsPerKey} connections per key`)
    }
    this.perKey.set(auth.key.id, held + 1)
    client.keyId = auth.key.id
    client.accountId = auth.account.id
    clearTimeout(client.authDeadline)
    client.socket.send(JSON.stringify({ type: 'authenticated', role: 'admin' }))
  }

  /** A policy violation: an error message, then a close with 1008. FORBIDDEN: a valid key that is not an admin's. */
  private refuse(client: Client, message: string, code: 'UNAUTHORIZED' | 'FORBIDDEN' = 'UNAUTHORIZED'): void {
    if (client.socket.readyState === client.socket.OPEN) {
      client.socket.send(JSON.stringify({ type: 'error', error: message, code }))
    }
    this.drop(client, ADMIN_CLOSE.policy, message)
  }

  private drop(client: Client, code: number, reason: string): void {
    this.forget(client)
    client.socket.close(code, reason.slice(0, 120))
    // A client that does not answer the close (or does not read at all) is cut after a while.
    setTimeout(() => client.socket.terminate(), 2000).unref()
  }

  private forget(client: Client): void {
    if (!this.clients.delete(client)) return
    clearTimeout(client.authDeadline)
    if (client.keyId != null) {
      const n = (this.perKey.get(client.keyId) ?? 1) - 1
      if (n <= 0) this.perKey.delete(client.keyId)
      else this.perKey.set(client.keyId, n)
    }
  }
}
