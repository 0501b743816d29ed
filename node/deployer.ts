// The Deployer: a model deployed to this node is fetched by CID over IPFS (bitswap from whichever
// peers hold it), checked (size, sha256, GGUF header), loaded and announced; undeploy unloads it and
// announces that, freeing the file and blocks no other deployment uses. Deployments are kept in the
// data dir, so a node killed mid-fetch resumes at its next start (blocks already fetched stay in the
// blockstore) and a deployed model comes back after a restart.
import { createHash } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { mkdir, open, readdir, readFile, rename, rm, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { pipeline } from 'node:stream/promises'
import { type Multiaddr, multiaddr } from '@multiformats/multiaddr'
import {
  DEPLOY_PROTOCOL,
  type DeployRequest,
  DeployRequestSchema,
  type DeployResponse,
  DeployResponseSchema,
  decodeFrames,
  encodeFrame,
  type ModelRecord,
  type ServedModel,
  STREAM_LIMITS,
} from '../protocols/index.ts'
import type { MeshPeer } from '../src/mesh/peer.ts'
import { sendBytes } from '../src/mesh/streams.ts'
import { InvalidModelError, validateGguf } from '../src/models/gguf.ts'
import { type ContentStore, parseCid } from '../src/storage/content.ts'
import type { Engine } from './engine.ts'

/** A model this node has been told to serve. */
export interface DeploymentSpec {
  /** The id clients use; resolved at load time when not known up front (`--model cid:…`). */
  id?: string | undefined
  version?: number | undefined
  cid: string
  /** Known from the registry; else read from the DAG's root. */
  sizeBytes?: number | undefined
  sha256?: string | undefined
  providers?: string[] | undefined
  /**
   * The peer id of the gateway that asked for it over the deploy protocol; only that gateway may
   * undeploy or replace it. Absent for the operator's own (`--model cid:`) and for deployments kept
   * before this was recorded: any trusted gateway may.
   */
  by?: string | undefined
}

interface Deployment {
  spec: DeploymentSpec
  state: 'fetching' | 'loading' | 'ready' | 'failed'
  fetched: number
  error?: string
  abort: AbortController
  engine?: Engine
  done: Promise<void>
}

export interface DeployerOptions {
  dataDir: string
  peer: MeshPeer
  store: ContentStore
  /** Loads a GGUF into an engine under `id` (undefined: the engine picks it from the file). */
  load(path: string, spec: DeploymentSpec & { id: string | undefined }): Promise<Engine>
  /** The model is ready: serve it. */
  serve(engine: Engine, spec: DeploymentSpec): void
  /**
   * The model leaves (or a new version replaced it): stop routing requests to `engine` and resolve
   * when its requests in flight are done; the deployer closes it after.
   */
  unserve(id: string, engine: Engine): Promise<void>
  /** Free memory for one more model, in bytes. */
  freeMemory(): bigint
  /** Ids in use by models this node serves from files (not deployments). */
  reservedIds(): ReadonlySet<string>
  /** Something changed that the capabilities record shows. */
  changed(): void
  announce(type: 'model:deployed' | 'model:undeployed', model: { id: string; cid: string; version?: number }): void
  /** Resolves a model id for a CID deployed without one (from the registry replica). */
  idForCid?(cid: string): string | undefined
  /**
   * Checks a deploy request from peer `from` against the registry: a reason to refuse, or
   * undefined. (The operator's own `--model cid:` deployments are not asked.)
   */
  verify?(spec: DeploymentSpec, records: ModelRecord[]): Promise<string | undefined>
  acceptDeploys: boolean
  /**
   * Whether deploy and undeploy requests from `peerId` are taken (the gateways this node bootstraps
   * from, and those the operator lists); anyone else is refused as forbidden.
   */
  trusts(peerId: string): Promise<boolean>
  log(line: string): void
}

const FILE = 'deployments.json'
/** A deploy request carries two signed records at most: a few KiB. */
export const MAX_DEPLOY_FRAME = 64 * 1024

export class Deployer {
  /**
   * One per (model id, CID): two ids may share weights (the same GGUF uploaded under two names) and
   * each is its own deployment, loaded and undeployed on its own; they share the file on disk.
   */
  private readonly deployments = new Set<Deployment>()
  /** Per CID, the end of the work on its file under way (fetch, check): one deployment at a time. */
  private readonly files = new Map<string, Promise<void>>()
  private readonly modelsDir: string
  private writing: Promise<void> = Promise.resolve()
  /** The start-up sweep of an earlier run's leftovers, while it runs; stop() ends it. */
  private sweeping: Promise<void> = Promise.resolve()
  private readonly stopping = new AbortController()

  constructor(private readonly o: DeployerOptions) {
    this.modelsDir = join(o.dataDir, 'models')
  }

  /** Resumes the deployments kept in the data dir, plus `extra` (`--model cid:…` on the command line). */
  async start(extra: DeploymentSpec[] = []): Promise<void> {
    await mkdir(this.modelsDir, { recursive: true })
    await this.o.peer.handle(
      DEPLOY_PROTOCOL,
      (stream, connection) => this.handle(stream, connection.remotePeer.toString()),
      STREAM_LIMITS.deploy,
    )
    const kept = await this.readKept()
    for (const spec of [...kept.specs, ...extra]) {
      if (this.find(spec) == null) this.begin(spec)
    }
    await this.persist()
    // In the background, once the deployments begun here have their blocks (a large model's take a
    // while to delete, and serving need not wait). Not when the list could not be read: what the
    // leftovers are is not known then.
    if (kept.readable) {
      this.sweeping = (async () => {
        await this.settled()
        await this.freeLeftovers(this.stopping.signal)
      })().catch((err: unknown) => this.o.log(`freeing disk left by an earlier run: ${(err as Error).message}`))
    }
  }

  /**
   * Frees what an earlier run left on disk: a model file (whole or partly fetched) that no deployment
   * here uses, and its blocks — an undeploy cut short by a crash, or made by a version that did not
   * free its disk. Only files named as this deployer names them (`<CID>.gguf`, `.part`) are touched.
   */
  private async freeLeftovers(signal: AbortSignal): Promise<void> {
    let names: string[]
    try {
      names = await readdir(this.modelsDir)
    } catch {
      return
    }
    const inUse = new Set([...this.deployments].map((d) => fileKey(d.spec.cid)))
    const orphans = new Set<string>()
    for (const name of names) {
      const m = /^(.+)\.gguf(\.part)?$/.exec(name)
      if (m?.[1] == null) continue
      let cid: string
      try {
        cid = parseCid(m[1]).toString()
      } catch {
        continue
      }
      if (cid === m[1] && !inUse.has(cid)) orphans.add(cid)
    }
    for (const cid of orphans) {
      if (signal.aborted) return
      this.o.log(`freeing ${cid}: left on disk by an earlier run, no deployment uses it`)
      await this.release(cid)
    }
  }

  /** Models being fetched, loaded, or that failed: what the capabilities record shows beside ready engines. */
  pending(): ServedModel[] {
    const out: ServedModel[] = []
    for (const d of this.deployments) {
      if (d.state === 'ready') continue
      const size = d.spec.sizeBytes ?? 0
      out.push({
        id: d.spec.id ?? d.spec.cid,
        cid: d.spec.cid,
        ...(d.spec.version != null ? { version: d.spec.version } : {}),
        contextSize: 0,
        sizeBytes: size,
        state: d.state,
        ...(d.state === 'fetching' && size > 0 ? { progress: Math.min(1, d.fetched / size) } : {}),
        ...(d.error != null ? { error: d.error.slice(0, 1024) } : {}),
        tasks: ['chat'],
      })
    }
    return out
  }

  /** Registry version and CID of a model served from a deployment. */
  origin(id: string): { cid: string; version?: number } | undefined {
    for (const d of this.deployments) {
      if (d.engine?.modelId === id)
        return { cid: d.spec.cid, ...(d.spec.version != null ? { version: d.spec.version } : {}) }
    }
    return undefined
  }

  /** Resolves when every deployment started so far has reached ready or failed. */
  async settled(): Promise<void> {
    await Promise.all([...this.deployments].map((d) => d.done))
  }

  /**
   * The deployment of `spec`'s id backed by its CID. A spec without an id (`--model cid:…`, resolved
   * at load) is there when any deployment of the CID is.
   */
  private find(spec: Pick<DeploymentSpec, 'id' | 'cid'>): Deployment | undefined {
    for (const d of this.deployments) {
      if (fileKey(d.spec.cid) === fileKey(spec.cid) && (spec.id == null || d.spec.id === spec.id)) return d
    }
    return undefined
  }

  async deploy(spec: DeploymentSpec): Promise<DeployResponse> {
    if (!this.o.acceptDeploys) {
      return { type: 'refused', code: 'not_accepting', message: 'this node does not take deploy requests' }
    }
    const same = this.find(spec)
    if (same != null && same.state !== 'failed') return { type: 'accepted', state: same.state }
    if (spec.id != null && this.o.reservedIds().has(spec.id)) {
      return {
        type: 'refused',
        code: 'invalid_request',
        message: `this node already serves a model named ${spec.id} from a file`,
      }
    }
    // A failed attempt at the same id and CID is replaced; another version of the same id keeps
    // serving until this one is ready (then it is retired), so both count against the room. Another
    // id on the same CID is a model of its own: loaded again under its id, it takes room of its own.
    const size = BigInt(spec.sizeBytes ?? 0)
    const room = this.o.freeMemory() + (same != null ? BigInt(same.spec.sizeBytes ?? 0) : 0n)
    if (size > room) {
      return {
        type: 'refused',
        code: 'no_room',
        message: `the model needs ${size} bytes; this node has ${room} free for weights`,
      }
    }
    if (same != null) this.deployments.delete(same)
    this.begin(spec)
    await this.persist()
    return { type: 'accepted', state: 'fetching' }
  }

  /**
   * Undeploys every deployment of a model id (each of its versions); other ids on the same CID stay.
   * A deployment whose id is not known yet (`--model cid:…` before it loads) goes by its CID, as
   * pending() names it.
   */
  async undeploy(id: string): Promise<boolean> {
    const matches = this.matching(id)
    for (const d of matches) await this.retire(d)
    return matches.length > 0
  }

  private matching(id: string): Deployment[] {
    return [...this.deployments].filter(
      (x) => x.spec.id === id || x.engine?.modelId === id || (x.spec.id == null && fileKey(x.spec.cid) === fileKey(id)),
    )
  }

  /**
   * Why gateway `from` may not undeploy (or replace) model `id` here: a deployment of it that another
   * gateway asked for (a failed one, when `replacing`, is replaced by any). Undefined: it may.
   */
  private notYours(id: string, from: string, replacing: boolean): string | undefined {
    const other = this.matching(id).find(
      (x) => x.spec.by != null && x.spec.by !== from && !(replacing && x.state === 'failed'),
    )
    return other == null ? undefined : `${id} was deployed on this node by another gateway (${other.spec.by})`
  }

  /** Stops a deployment: aborts its fetch or load, drains and closes its engine, announces it. */
  private async retire(d: Deployment): Promise<void> {
    this.deployments.delete(d)
    d.abort.abort(new Error('undeployed'))
    await d.done
    const id = d.engine?.modelId ?? d.spec.id
    if (d.engine != null) {
      await this.o.unserve(d.engine.modelId, d.engine)
      await d.engine.close()
    }
    await this.persist()
    this.o.changed()
    await this.release(d.spec.cid)
    if (id != null) {
      this.o.announce('model:undeployed', {
        id,
        cid: d.spec.cid,
        ...(d.spec.version != null ? { version: d.spec.version } : {}),
      })
    }
  }

  /**
   * Frees the disk a CID took (its file under models/ and its blocks) once no deployment uses it:
   * another id on the same weights keeps both. Runs in turn with the work on the CID's file, so a
   * deployment of it begun meanwhile finds either all of it or none.
   */
  private async release(cidText: string, signal = this.stopping.signal): Promise<void> {
    const key = fileKey(cidText)
    const used = (): boolean => [...this.deployments].some((x) => fileKey(x.spec.cid) === key)
    // Still in use (another id may be fetching it): nothing to free, nothing to wait for.
    if (used()) return
    try {
      await this.withFile(cidText, signal, async () => {
        if (used()) return
        const cid = parseCid(cidText)
        const path = join(this.modelsDir, `${cid.toString()}.gguf`)
        await rm(path, { force: true })
        await rm(`${path}.part`, { force: true })
        const keep = [...this.deployments].flatMap((x) => {
          try {
            return [parseCid(x.spec.cid)]
          } catch {
            return []
          }
        })
        await this.o.store.remove(cid, { keep, signal })
      })
    } catch (err) {
      // Undeployed all the same: what is left is disk, told so the operator can see it.
      this.o.log(`undeploy of ${cidText}: could not free its disk: ${(err as Error).message}`)
    }
  }

  async stop(): Promise<void> {
    this.stopping.abort()
    await this.o.peer.unhandle(DEPLOY_PROTOCOL).catch(() => undefined)
    for (const d of this.deployments) d.abort.abort(new Error('node stopping'))
    await Promise.all([...this.deployments].map((d) => d.done))
    await this.sweeping
  }

  private begin(spec: DeploymentSpec): void {
    const d: Deployment = {
      spec,
      state: 'fetching',
      fetched: 0,
      abort: new AbortController(),
      done: Promise.resolve(),
    }
    this.deployments.add(d)
    d.done = this.run(d).catch((err: unknown) => {
      if (d.abort.signal.aborted) return
      d.state = 'failed'
      d.error = (err as Error).message
      this.o.log(`deploy ${spec.id ?? spec.cid} failed: ${d.error}`)
      this.o.changed()
    })
    this.o.changed()
  }

  private async run(d: Deployment): Promise<void> {
    const { spec } = d
    const signal = d.abort.signal
    const cid = parseCid(spec.cid)
    const providers = (spec.providers ?? []).flatMap((a) => {
      try {
        return [multiaddr(a)]
      } catch {
        return []
      }
    })
    const path = join(this.modelsDir, `${cid.toString()}.gguf`)
    // The root block says how big the file is: a request that claimed less is refused before
    // any weights move (room was granted for the claimed size).
    const size = await this.o.store.size(cid, { signal, providers })
    if (spec.sizeBytes != null && spec.sizeBytes !== size) {
      throw new Error(`the CID holds ${size} bytes, not the ${spec.sizeBytes} the deploy request said`)
    }
    spec.sizeBytes = size
    // Another id on the same CID may be fetching or checking the same file: one at a time, and the
    // next finds it whole.
    await this.withFile(spec.cid, signal, async () => {
      if (!(await complete(path, size))) await this.fetch(d, path, size, providers)
      else this.checkKnownDigest(spec)
      // Every block is local now (kept while a deployment uses them): serve them to the next node.
      void this.o.store.provide(cid).catch(() => undefined)
      d.state = 'loading'
      this.o.changed()
      try {
        await validateGguf(path, { signal })
      } catch (err) {
        if (!(err instanceof InvalidModelError)) throw err
        // Not something llama.cpp may see: gone, and the reason without this node's paths.
        await rm(path, { force: true })
        throw new Error(`the weights are not a usable GGUF: ${err.message.slice(err.path.length + 2)}`)
      }
    })
    const id = spec.id ?? this.o.idForCid?.(spec.cid)
    const engine = await this.o.load(path, { ...spec, id })
    if (signal.aborted || !this.deployments.has(d)) {
      await engine.close()
      return
    }
    spec.id = engine.modelId
    d.engine = engine
    d.state = 'ready'
    // Another version of the same model, still serving: retired now that this one serves.
    const older = [...this.deployments].filter((x) => x !== d && x.spec.id === engine.modelId)
    this.o.serve(engine, spec)
    for (const x of older) await this.retire(x)
    await this.persist()
    this.o.changed()
    this.o.announce('model:deployed', {
      id: engine.modelId,
      cid: spec.cid,
      ...(spec.version != null ? { version: spec.version } : {}),
    })
  }

  /**
   * A file already here for another id on the same CID was checked against that one's sha256: the
   * same weights must have the same digest, whatever the id.
   */
  private checkKnownDigest(spec: DeploymentSpec): void {
    if (spec.sha256 == null) return
    for (const x of this.deployments) {
      if (
        fileKey(x.spec.cid) === fileKey(spec.cid) &&
        x.state === 'ready' &&
        x.spec.sha256 != null &&
        x.spec.sha256 !== spec.sha256
      ) {
        throw new Error(`sha256 of the weights is ${x.spec.sha256}, expected ${spec.sha256}`)
      }
    }
  }

  /**
   * Fetches the weights of `d` into `path`, checking size and sha256 on the way; blocks fetched
   * before a crash are read back from the blockstore.
   */
  private async fetch(d: Deployment, path: string, size: number, providers: Multiaddr[]): Promise<void> {
    const { spec } = d
    const signal = d.abort.signal
    const cid = parseCid(spec.cid)
    const part = `${path}.part`
    const hash = createHash('sha256')
    const counted = async function* (this: void, source: AsyncIterable<Uint8Array>, onBytes: (n: number) => void) {
      for await (const chunk of source) {
        hash.update(chunk)
        onBytes(chunk.byteLength)
        yield chunk
      }
    }
    let lastReport = 0
    await pipeline(
      counted(this.o.store.cat(cid, { signal, providers }), (n) => {
        d.fetched += n
        // Progress reaches capabilities every 5% (each change re-gossips the record).
        if (size > 0 && (d.fetched - lastReport) / size >= 0.05) {
          lastReport = d.fetched
          this.o.changed()
        }
      }),
      createWriteStream(part),
      { signal },
    )
    if (d.fetched !== size) throw new Error(`fetched ${d.fetched} bytes, expected ${size}`)
    const digest = hash.digest('hex')
    if (spec.sha256 != null && digest !== spec.sha256) {
      await rm(part, { force: true })
      throw new Error(`sha256 of the fetched weights is ${digest}, expected ${spec.sha256}`)
    }
    spec.sha256 = digest
    await rename(part, path)
  }

  /**
   * Runs `work` once no other deployment of the same CID is inside it (two ids may share a file).
   * Waiting ends early when `signal` aborts (an undeploy does not wait for another's fetch).
   */
  private async withFile(cidText: string, signal: AbortSignal, work: () => Promise<void>): Promise<void> {
    const cid = fileKey(cidText)
    const before = this.files.get(cid)
    const mine = (async () => {
      if (before != null) await untilAborted(before, signal)
      await work()
    })()
    const tail = Promise.all([before, mine.catch(() => undefined)]).then(() => undefined)
    this.files.set(cid, tail)
    try {
      await mine
    } finally {
      if (this.files.get(cid) === tail) this.files.delete(cid)
    }
  }

  private async handle(stream: import('@libp2p/interface').Stream, from: string): Promise<void> {
    const answer = async (response: DeployResponse): Promise<void> => {
      await sendBytes(stream, encodeFrame(DeployResponseSchema, response))
      await stream.close()
    }
    try {
      let request: DeployRequest | undefined
      for await (const frame of decodeFrames(stream, DeployRequestSchema, MAX_DEPLOY_FRAME)) {
        request = frame
        break
      }
      if (request == null) return void stream.abort(new Error('no request'))
      const what = request.type === 'deploy' ? `deploy of ${request.model.id}` : `undeploy of ${request.modelId}`
      const forbidden = async (message: string): Promise<void> => {
        this.o.log(`refused the ${what} asked by ${from}: ${message}`)
        await answer({ type: 'refused', code: 'forbidden', message })
      }
      if (!(await this.o.trusts(from))) {
        return await forbidden(
          `peer ${from} is not a gateway this node trusts (its bootstrap peers and node.trustedGateways)`,
        )
      }
      if (request.type === 'deploy') {
        try {
          parseCid(request.model.cid)
        } catch (err) {
          return await answer({ type: 'refused', code: 'invalid_request', message: (err as Error).message })
        }
        const spec: DeploymentSpec = {
          id: request.model.id,
          version: request.model.version,
          cid: request.model.cid,
          sizeBytes: request.model.sizeBytes,
          sha256: request.model.sha256,
          providers: request.providers,
          by: from,
        }
        const taken = this.notYours(request.model.id, from, true)
        if (taken != null) return await forbidden(taken)
        const refusal = this.o.acceptDeploys ? await this.o.verify?.(spec, request.records) : undefined
        if (refusal != null) return await answer({ type: 'refused', code: 'invalid_request', message: refusal })
        return await answer(await this.deploy(spec))
      }
      const taken = this.notYours(request.modelId, from, false)
      if (taken != null) return await forbidden(taken)
      const removed = await this.undeploy(request.modelId)
      await answer(
        removed
          ? { type: 'accepted', state: 'unloaded' }
          : { type: 'refused', code: 'not_deployed', message: `${request.modelId} is not deployed on this node` },
      )
    } catch (err) {
      stream.abort(err as Error)
    }
  }

  /**
   * The deployment list kept in the data dir. One that cannot be read is set aside (not overwritten)
   * and said so; `readable` is false then.
   */
  private async readKept(): Promise<{ specs: DeploymentSpec[]; readable: boolean }> {
    const file = join(this.o.dataDir, FILE)
    let text: string
    try {
      text = await readFile(file, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { specs: [], readable: true }
      this.o.log(`cannot read ${file}: ${(err as Error).message}; deployments it lists are not resumed`)
      return { specs: [], readable: false }
    }
    try {
      const list = JSON.parse(text) as DeploymentSpec[]
      if (!Array.isArray(list)) throw new Error('not a list')
      return { specs: list.filter((s) => typeof s?.cid === 'string'), readable: true }
    } catch (err) {
      const aside = `${file}.unreadable-${Date.now()}`
      await rename(file, aside).catch(() => undefined)
      this.o.log(`${file} is not a deployment list (${(err as Error).message}): kept as ${aside}; nothing is resumed`)
      return { specs: [], readable: false }
    }
  }

  /** Writes the deployment list (one write at a time, each of the list as it is then). */
  private persist(): Promise<void> {
    this.writing = this.writing.then(async () => {
      const list = [...this.deployments.values()].map((d) => ({ ...d.spec, providers: undefined }))
      const file = join(this.o.dataDir, FILE)
      // On disk before it replaces the old list: a crash leaves one or the other, never an empty file.
      const handle = await open(`${file}.tmp`, 'w')
      try {
        await handle.writeFile(JSON.stringify(list, null, 2))
        await handle.sync()
      } finally {
        await handle.close()
      }
      await rename(`${file}.tmp`, file)
    })
    return this.writing
  }
}

async function complete(path: string, size: number): Promise<boolean> {
  try {
    return (await stat(path)).size === size
  } catch {
    return false
  }
}

/** Resolves when `p` does, or rejects with the reason once `signal` aborts. */
function untilAborted(p: Promise<void>, signal: AbortSignal): Promise<void> {
  signal.throwIfAborted()
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(signal.reason)
    signal.addEventListener('abort', onAbort, { once: true })
    void p.then(() => {
      signal.removeEventListener('abort', onAbort)
      resolve()
    })
  })
}

/** A CID as its file is named and its work is keyed: the canonical string (the text as given when it is no CID). */
function fileKey(cid: string): string {
  try {
    return parseCid(cid).toString()
  } catch {
    return cid
  }
}
