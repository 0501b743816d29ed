// The model registry: model id → versions → CID, as signed records every peer keeps a replica of.
// A gateway signs a record when it accepts an upload; the record spreads by gossip and by sync when
// a peer joins. Any peer checks the signature against the signing gateway's peer id, so a record
// cannot be forged or altered on its way, and version 1 fixes who may add the next ones. A model id
// belongs to the gateway whose record for it this replica accepted first (kept on disk): records for
// that id signed by any other gateway are refused, whatever they say (an earlier createdAt included).
import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { Level } from 'level'
import {
  type ModelRecord,
  ModelRecordSchema,
  modelRecordPayload,
  type UnsignedModelRecord,
} from '../../protocols/index.ts'

export async function signModelRecord(key: PrivateKey, record: UnsignedModelRecord): Promise<ModelRecord> {
  const signature = await key.sign(modelRecordPayload(record))
  return { ...record, signature: Buffer.from(signature).toString('base64url') }
}

/** True when `record` parses and is signed by the gateway it names. */
export async function verifyModelRecord(record: unknown): Promise<boolean> {
  const parsed = ModelRecordSchema.safeParse(record)
  if (!parsed.success) return false
  const { signature, ...unsigned } = parsed.data
  try {
    const key = peerIdFromString(unsigned.gateway).publicKey
    if (key == null) return false
    return await key.verify(modelRecordPayload(unsigned), Buffer.from(signature, 'base64url'))
  } catch {
    return false
  }
}

/** The model ids a name becomes: lowercase, runs of other characters to '-'. */
export function slugOf(name: string): string {
  return name
    .normalize('NFKD')
    .replace(/[\u0300-\u036f]/g, '')
    .toLowerCase()
    .replace(/[^a-z0-9._-]+/g, '-')
    .replace(/^[^a-z0-9]+|[^a-z0-9]+$/g, '')
    .slice(0, 96)
    .replace(/[^a-z0-9]+$/g, '')
}

/** One model as the registry sees it: its versions (oldest first) under one owner. */
export interface RegistryModel {
  id: string
  owner: string
  gateway: string
  versions: ModelRecord[]
  latest: ModelRecord
}

const recordKey = (id: string, version: number): string => `r!${id}!${String(version).padStart(7, '0')}`
/** The gateway (signer) a model id belongs to in this replica. */
const signerKey = (id: string): string => `s!${id}`

/**
 * Which of two records of the same signer for the same (id, version) wins: the earlier, then the
 * lower signature. (Records of another signer never get this far.)
 */
const wins = (a: ModelRecord, b: ModelRecord): boolean =>
  a.createdAt !== b.createdAt ? a.createdAt < b.createdAt : a.signature < b.signature

/** `foreign`: signed by another gateway than the one the id belongs to; refused. */
/** Versions waiting for their id's version 1, at most (a peer could send any number). */
const MAX_ORPHANS = 1_000

export type AcceptResult = 'added' | 'known' | 'invalid' | 'lost' | 'foreign' | 'orphan'

/** How many refused foreign records are remembered so each is logged once. */
const MAX_FOREIGN_LOGGED = 10_000

export class ModelRegistry {
  private readonly byKey = new Map<string, ModelRecord>()
  private readonly counts = new Map<string, number>()
  /** Versions > 1 of ids nobody holds yet, waiting for their version 1. */
  private readonly orphans = new Map<string, ModelRecord[]>()
  private orphanCount = 0
  private readonly listeners = new Set<(record: ModelRecord) => void>()
  /** Model id → the gateway whose record for it was accepted first. */
  private readonly signers = new Map<string, string>()
  private readonly foreignLogged = new Set<string>()

  private constructor(
    private readonly db: Level<string, string>,
    private readonly log: (line: string) => void,
  ) {}

  /** Opens (or creates) the replica in `dir`; `log` hears of refused records. */
  static async open(dir: string, log: (line: string) => void = () => undefined): Promise<ModelRegistry> {
    const db = new Level<string, string>(dir)
    await db.open()
    const registry = new ModelRegistry(db, log)
    for await (const [key, value] of db.iterator({ gte: 'r!', lt: 'r"' })) {
      registry.byKey.set(key, JSON.parse(value) as ModelRecord)
    }
    for await (const [key, value] of db.iterator({ gte: 'i!', lt: 'i"' })) {
      registry.counts.set(key.slice(2), Number(value) || 0)
    }
    for await (const [key, value] of db.iterator({ gte: 's!', lt: 's"' })) {
      registry.signers.set(key.slice(2), value)
    }
    // A replica written before signers were kept: each id belongs to the signer of its lowest version.
    const missing: Array<{ type: 'put'; key: string; value: string }> = []
    for (const r of registry.records()) {
      if (registry.signers.has(r.id)) continue
      registry.signers.set(r.id, r.gateway)
      missing.push({ type: 'put', key: signerKey(r.id), value: r.gateway })
    }
    if (missing.length > 0) await db.batch(missing)
    return registry
  }

  /** The gateway a model id belongs to here (whose record for it was accepted first), if known. */
  signerOf(id: string): string | undefined {
    return this.signers.get(id)
  }

  /** Takes a record from anywhere (our upload, gossip, sync): checked, stored once, announced. */
  async accept(candidate: unknown): Promise<AcceptResult> {
    if (!(await verifyModelRecord(candidate))) return 'invalid'
    const record = ModelRecordSchema.parse(candidate)
    const signer = this.signers.get(record.id)
    if (signer != null && signer !== record.gateway) {
      if (!this.foreignLogged.has(record.signature)) {
        if (this.foreignLogged.size >= MAX_FOREIGN_LOGGED) this.foreignLogged.clear()
        this.foreignLogged.add(record.signature)
        this.log(
          `registry: refused version ${record.version} of ${record.id} signed by gateway ${record.gateway} (owner ${record.owner}): ${record.id} belongs to gateway ${signer}, whose record for it came first`,
        )
      }
      return 'foreign'
    }
    // Only a first version claims an id: a later one for an id nobody holds would squat it unseen. It
    // waits (in memory, bounded) for its version 1, which may simply not have arrived yet.
    if (signer == null && record.version !== 1) {
      const waiting = this.orphans.get(record.id) ?? []
      // Once each (gossip and a sync may both bring it).
      if (this.orphanCount < MAX_ORPHANS && !waiting.some((r) => r.signature === record.signature)) {
        this.orphans.set(record.id, [...waiting, record])
        this.orphanCount++
      }
      return 'orphan'
    }
    const key = recordKey(record.id, record.version)
    const have = this.byKey.get(key)
    if (have != null) {
      if (have.signature === record.signature) return 'known'
      if (!wins(record, have)) return 'lost'
    }
    // Set before any await: a record of another signer for the same new id, checked meanwhile, is foreign.
    const claims = signer == null
    if (claims) this.signers.set(record.id, record.gateway)
    this.byKey.set(key, record)
    await this.db.batch([
      { type: 'put', key, value: JSON.stringify(record) },
      ...(claims ? [{ type: 'put' as const, key: signerKey(record.id), value: record.gateway }] : []),
    ])
    for (const l of this.listeners) l(record)
    if (claims) await this.adoptOrphans(record)
    return 'added'
  }

  /** Later versions that came before this id's version 1: taken now if its signer signed them. */
  private async adoptOrphans(first: ModelRecord): Promise<void> {
    const waiting = this.orphans.get(first.id)
    if (waiting == null) return
    this.orphans.delete(first.id)
    this.orphanCount -= waiting.length
    for (const r of waiting) if (r.gateway === first.gateway) await this.accept(r)
  }

  /** Calls `listener` with every record added from now on. */
  onRecord(listener: (record: ModelRecord) => void): () => void {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }

  /** Every record held (what a sync answers with), by id then version. */
  records(): ModelRecord[] {
    return [...this.byKey.entries()].sort(([a], [b]) => (a < b ? -1 : 1)).map(([, r]) => r)
  }

  /** All models, versions grouped; versions not signed by the owner's gateway for the owner are left out. */
  models(): RegistryModel[] {
    const groups = new Map<string, ModelRecord[]>()
    for (const r of this.records()) {
      const list = groups.get(r.id) ?? []
      list.push(r)
      groups.set(r.id, list)
    }
    const out: RegistryModel[] = []
    for (const [id, list] of groups) {
      const model = this.group(id, list)
      if (model != null) out.push(model)
    }
    return out
  }

  get(id: string): RegistryModel | undefined {
    const list = this.records().filter((r) => r.id === id)
    return list.length > 0 ? this.group(id, list) : undefined
  }

  /** The latest listed version whose weights are `cid`, if the registry knows the CID. */
  byCid(cid: string): ModelRecord | undefined {
    let best: ModelRecord | undefined
    for (const model of this.models()) {
      for (const r of model.versions) {
        if (r.cid === cid && (best == null || r.version > best.version)) best = r
      }
    }
    return best
  }

  private group(id: string, list: ModelRecord[]): RegistryModel | undefined {
    const sorted = [...list].sort((a, b) => a.version - b.version)
    const first = sorted[0]
    // Ownership is fixed by the lowest version known; without version 1 a model is not shown yet.
    if (first == null || first.version !== 1) return undefined
    const versions = sorted.filter((r) => r.owner === first.owner && r.gateway === first.gateway)
    const latest = versions[versions.length - 1] ?? first
    return { id, owner: first.owner, gateway: first.gateway, versions, latest }
  }

  /** Counts one inference of `model` anywhere in the mesh (from inference:complete events). */
  async countInference(model: string): Promise<void> {
    this.counts.set(model, (this.counts.get(model) ?? 0) + 1)
    // Kept on disk once a second, not once per call (a write per inference cost a busy gateway ~80 µs).
    this.unsaved.add(model)
    if (this.saver == null) {
      this.saver = setTimeout(() => void this.saveCounts().catch(() => undefined), 1_000)
      this.saver.unref()
    }
  }

  private unsaved = new Set<string>()
  private saver: NodeJS.Timeout | undefined

  private async saveCounts(): Promise<void> {
    clearTimeout(this.saver)
    this.saver = undefined
    const models = [...this.unsaved]
    this.unsaved.clear()
    if (models.length === 0) return
    await this.db.batch(
      models.map((m) => ({ type: 'put' as const, key: `i!${m}`, value: String(this.counts.get(m) ?? 0) })),
    )
  }

  inferences(model: string): number {
    return this.counts.get(model) ?? 0
  }

  async close(): Promise<void> {
    this.listeners.clear()
    await this.saveCounts()
    await this.db.close()
  }
}
