// The Models API: upload a GGUF (streamed into IPFS, versioned, signed into the registry), list
// public models and their versions, deploy and undeploy on nodes over the mesh, and download the
// weights through a signed, expiring URL that streams from IPFS (HTTP Range supported).
import { randomUUID, timingSafeEqual } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { mkdir, rm } from 'node:fs/promises'
import { join } from 'node:path'
import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import { type Context, Hono } from 'hono'
import { z } from 'zod'
import {
  DEPLOY_PROTOCOL,
  type DeployRequest,
  DeployRequestSchema,
  type DeployResponse,
  DeployResponseSchema,
  decodeFrames,
  encodeFrame,
  MODEL_CATEGORIES,
  type ModelRecord,
  ModelSlugSchema,
  type ServedModel,
} from '../protocols/index.ts'
import type { GatewaySecret } from '../src/ledger/secrets.ts'
import type { Directory, NodeEntry } from '../src/mesh/directory.ts'
import type { MeshPeer } from '../src/mesh/peer.ts'
import { sendBytes } from '../src/mesh/streams.ts'
import { InvalidModelError, validateGguf } from '../src/models/gguf.ts'
import { freeMemory } from '../src/models/placement.ts'
import { type ModelRegistry, type RegistryModel, signModelRecord, slugOf } from '../src/models/registry.ts'
import type { RegistryReplica } from '../src/models/registry-sync.ts'
import { formatUsd } from '../src/payments/money.ts'
import { type ContentStore, parseCid } from '../src/storage/content.ts'
import { type AuthVars, body, requireAuth } from './api-routes.ts'
import { ApiError, conflict, invalidRequest, noNodes, notFound } from './errors.ts'
import { publicOrigin } from './origin.ts'
import type { Pricing } from './pricing.ts'
import { PROVIDERS } from './providers/catalog.ts'
import { receiveUpload } from './upload.ts'

export interface ModelsConfig {
  /** Largest model file accepted by upload, in bytes. @default 64 GiB */
  maxUploadBytes?: number | undefined
  /** How long a download URL stays valid. @default 3600 */
  downloadTtlSeconds?: number | undefined
}

export interface ModelsDeps {
  dataDir: string
  /** The gateway's public URL (gateway.publicUrl): download links point there. */
  publicUrl?: URL | undefined
  peer: MeshPeer
  privateKey: PrivateKey
  store: ContentStore
  registry: ModelRegistry
  replica: RegistryReplica
  directory: Directory
  pricing: Pricing
  secret: GatewaySecret
  config?: ModelsConfig
  log: (line: string) => void
  /** Ids served under another name already (an enabled provider's models): not to be taken by an upload. */
  providerModels?: () => ReadonlySet<string>
}

/**
 * Why a new model id cannot be taken by a user's upload, or undefined: a provider's model (in the
 * catalog, or listed by an enabled provider), or a model nodes serve from their own files. Either
 * would route other users' requests for that name to whoever uploaded it.
 */
function reservedModel(deps: ModelsDeps, id: string): string | undefined {
  // Any case: a slug is lower-case, some providers' own ids are not.
  const same = (name: string): boolean => name.toLowerCase() === id
  const catalog = Object.values(PROVIDERS).some((p) =>
    Object.entries(p.models).some(([ours, theirs]) => same(ours) || same(theirs)),
  )
  if (catalog || [...(deps.providerModels?.() ?? [])].some(same)) return 'the name of a provider model'
  if (deps.directory.knowsModel(id)) return 'the name of a model nodes serve'
  return undefined
}

const DEFAULT_MAX_UPLOAD = 64 * 1024 ** 3
const DEPLOY_TIMEOUT_MS = 10_000

const UploadFields = z.object({
  name: z.string({ error: 'is required' }).trim().min(1, 'is required').max(128, 'must be at most 128 characters'),
  category: z.enum(MODEL_CATEGORIES, { error: `must be one of ${MODEL_CATEGORIES.join(', ')}` }).default('chat'),
  description: z.string().max(2000, 'must be at most 2000 characters').default(''),
})

const DeployBody = z.object({
  version: z.number().int().min(1).optional(),
  nodeId: z.string().min(1).max(128).optional(),
})

/** Reads an optional JSON body (none, or an empty one, is `{}`). */
async function optionalBody<S extends z.ZodType>(c: Context, schema: S): Promise<z.output<S>> {
  const length = c.req.header('content-length')
  if ((length == null || length === '0') && c.req.header('transfer-encoding') == null) return schema.parse({})
  return body(c, schema)
}

/** Sends one request on the deploy protocol and reads the answer. */
async function askNode(peer: MeshPeer, nodeId: string, request: DeployRequest): Promise<DeployResponse> {
  const signal = AbortSignal.timeout(DEPLOY_TIMEOUT_MS)
  const stream = await peer.dialProtocol(peerIdFromString(nodeId), DEPLOY_PROTOCOL, { signal })
  try {
    await sendBytes(stream, encodeFrame(DeployRequestSchema, request), signal)
    await stream.close({ signal })
    for await (const response of decodeFrames(stream, DeployResponseSchema, 64 * 1024)) return response
    throw new Error(`${nodeId} closed the deploy stream without an answer`)
  } finally {
    if (stream.status === 'open') stream.abort(new Error('done'))
  }
}

/**
 * What a node serves, as deployments of registry models: a deployment belongs to a model id AND the
 * CID of one of its versions. Two models may share their weights (the same GGUF uploaded under two
 * names is one CID); serving one of them says nothing about the other.
 */
export function deploymentOf(
  model: Pick<RegistryModel, 'id' | 'versions'>,
  served: Pick<ServedModel, 'id' | 'cid'>,
): ModelRecord | undefined {
  if (served.id !== model.id || served.cid == null) return undefined
  return model.versions.find((v) => v.cid === served.cid)
}

/** How many of an account's models (uploaded through this gateway) are deployed on a node now. */
export function modelsDeployedBy(deps: Pick<ModelsDeps, 'registry' | 'directory' | 'peer'>, accountId: string): number {
  const gateway = deps.peer.peerId.toString()
  const served: ServedModel[] = []
  for (const node of deps.directory.nodes()) {
    for (const m of node.capabilities?.models ?? []) if (m.state !== 'failed') served.push(m)
  }
  return deps.registry
    .models()
    .filter((m) => m.owner === accountId && m.gateway === gateway && served.some((s) => deploymentOf(m, s) != null))
    .length
}

export function modelRoutes(deps: ModelsDeps): Hono<AuthVars> {
  const api = new Hono<AuthVars>()
  const { registry, store, directory } = deps
  const maxUpload = deps.config?.maxUploadBytes ?? DEFAULT_MAX_UPLOAD
  const ttl = deps.config?.downloadTtlSeconds ?? 3600
  const gatewayId = deps.peer.peerId.toString()
  const uploads = join(deps.dataDir, 'uploads')
  /** One upload per model id at a time, so versions are numbered without gaps or doubles. */
  const busy = new Set<string>()

  const getModel = (id: string): RegistryModel => {
    const model = ModelSlugSchema.safeParse(id).success ? registry.get(id) : undefined
    if (model == null) throw notFound(`Model '${id}' does not exist. GET /api/models/public lists the models.`)
    return model
  }

  /** Where a model (any version) is deployed now, from the nodes' capabilities. */
  const deployments = (model: RegistryModel) => {
    const out: Array<
      { nodeId: string; version: number; cid: string; state: ServedModel['state'] } & Partial<ServedModel>
    > = []
    for (const node of directory.nodes()) {
      for (const m of node.capabilities?.models ?? []) {
        const record = deploymentOf(model, m)
        if (record == null) continue
        out.push({
          nodeId: node.peerId,
          version: record.version,
          cid: record.cid,
          state: m.state,
          ...(m.progress != null ? { progress: m.progress } : {}),
          ...(m.error != null ? { error: m.error } : {}),
        })
      }
    }
    return out
  }

  const versionBody = (r: ModelRecord) => ({
    version: r.version,
    cid: r.cid,
    size: r.sizeBytes,
    sha256: r.sha256,
    createdAt: new Date(r.createdAt).toISOString(),
  })

  const modelBody = (model: RegistryModel) => {
    const r = model.latest
    const where = deployments(model)
    const price = deps.pricing.priceOf(model.id)
    return {
      id: model.id,
      name: r.name,
      category: r.category,
      description: r.description,
      owner: model.owner,
      architecture: r.gguf.architecture,
      parameters: r.gguf.parameters,
      quantization: r.gguf.quantization,
      contextLength: r.gguf.contextLength,
      size: r.sizeBytes,
      version: r.version,
      cid: r.cid,
      createdAt: new Date(model.versions[0]?.createdAt ?? r.createdAt).toISOString(),
      updatedAt: new Date(r.createdAt).toISOString(),
      pricing: {
        currency: 'USDC',
        unit: 'per 1M tokens',
        input: formatUsd(price.inputPerMillion),
        output: formatUsd(price.outputPerMillion),
      },
      stats: {
        nodes: new Set(where.filter((d) => d.state === 'ready').map((d) => d.nodeId)).size,
        inferences: registry.inferences(model.id),
      },
      deployments: where,
    }
  }

  api.post('/models/upload', async (c) => {
    const auth = requireAuth(c)
    await mkdir(uploads, { recursive: true })
    const tmp = join(uploads, `${randomUUID()}.gguf`)
    let claimed: string | undefined
    try {
      const received = await receiveUpload(c, tmp, maxUpload)
      if (received.file == null) throw invalidRequest("'file' is required: the GGUF model file.", 'file')
      const parsed = UploadFields.safeParse(received.fields)
      if (!parsed.success) {
        const issue = parsed.error.issues[0]
        const field = String(issue?.path[0] ?? 'name')
        throw invalidRequest(`'${field}' ${issue?.message ?? 'is invalid'}.`, field)
      }
      const fields = parsed.data
      const id = slugOf(fields.name)
      if (!ModelSlugSchema.safeParse(id).success) {
        throw invalidRequest("'name' must contain letters or digits (it becomes the model id).", 'name')
      }
      let summary: Awaited<ReturnType<typeof validateGguf>>
      try {
        summary = await validateGguf(tmp)
      } catch (err) {
        if (err instanceof InvalidModelError) {
          throw invalidRequest(
            `The file is not a valid GGUF model: ${err.message.slice(err.path.length + 2)}.`,
            'file',
            'invalid_model',
          )
        }
        throw err
      }
      if (busy.has(id)) throw conflict(`Another upload of '${id}' is in progress; retry when it has finished.`)
      busy.add(id)
      claimed = id
      const owner = auth.account.id
      const existing = registry.get(id)
      if (existing != null && (existing.owner !== owner || existing.gateway !== gatewayId)) {
        throw conflict(`A model named '${id}' already exists and belongs to someone else. Choose another name.`)
      }
      // The operator (an admin) may publish weights under a provider's name: they then serve it too.
      const reserved = existing == null && auth.account.role !== 'admin' ? reservedModel(deps, id) : undefined
      if (reserved != null) throw conflict(`'${id}' is ${reserved}. Choose another name.`)
      const version = (existing?.latest.version ?? 0) + 1
      const { cid, size } = await store.add(createReadStream(tmp, { highWaterMark: 1024 * 1024 }))
      const record = await signModelRecord(deps.privateKey, {
        v: 1,
        id,
        version,
        cid: cid.toString(),
        sizeBytes: size,
        sha256: received.file.sha256,
        name: fields.name,
        category: fields.category,
        description: fields.description,
        owner,
        gateway: gatewayId,
        gguf: {
          name: summary.name.slice(0, 256),
          architecture: summary.architecture,
          parameters: summary.parameterCount,
          quantization: summary.quantization.slice(0, 32),
          contextLength: summary.contextLength,
        },
        createdAt: Date.now(),
      })
      const accepted = await registry.accept(record)
      if (accepted !== 'added') {
        throw conflict(`'${id}' is held in the cluster by another gateway's record (${accepted}). Choose another name.`)
      }
      void deps.replica.publish(record).catch((err: unknown) => deps.log(`registry publish: ${(err as Error).message}`))
      void store.provide(cid).catch(() => undefined)
      return c.json(
        {
          id,
          version,
          cid: record.cid,
          size,
          sha256: record.sha256,
          name: record.name,
          category: record.category,
          createdAt: new Date(record.createdAt).toISOString(),
        },
        201,
      )
    } finally {
      if (claimed != null) busy.delete(claimed)
      await rm(tmp, { force: true })
    }
  })

  api.get('/models/public', (c) => {
    const models = registry.models().map(modelBody)
    models.sort((a, b) => a.id.localeCompare(b.id))
    return c.json({ models, total: models.length })
  })

  api.get('/models/public/:id', (c) => c.json(modelBody(getModel(c.req.param('id')))))

  api.get('/models/:id/versions', (c) => {
    const model = getModel(c.req.param('id'))
    return c.json({ id: model.id, versions: model.versions.map(versionBody).reverse() })
  })

  const pickVersion = (model: RegistryModel, version: number | undefined): ModelRecord => {
    if (version == null) return model.latest
    const r = model.versions.find((v) => v.version === version)
    if (r == null) throw notFound(`Model '${model.id}' has no version ${version}.`)
    return r
  }

  /** Nodes that could take the model, most free memory first; the caller tries them in turn. */
  const candidates = (model: RegistryModel, record: ModelRecord, nodeId: string | undefined): NodeEntry[] => {
    const nodes = directory.nodes().filter((n) => n.capabilities != null && n.capabilities.acceptsDeploys !== false)
    if (nodeId != null) {
      const node = nodes.find((n) => n.peerId === nodeId)
      if (node == null) throw notFound(`No node '${nodeId}' that takes deploys is in the cluster.`)
      return [node]
    }
    // A node holding this version of this model already; the same weights under another id do not count.
    const holding = (n: NodeEntry) =>
      n.capabilities?.models.some((m) => m.state !== 'failed' && deploymentOf(model, m)?.cid === record.cid)
    return nodes
      .filter((n) => !holding(n) && n.capabilities != null && freeMemory(n.capabilities) >= BigInt(record.sizeBytes))
      .sort((a, b) => {
        const fa = freeMemory(a.capabilities as NonNullable<NodeEntry['capabilities']>)
        const fb = freeMemory(b.capabilities as NonNullable<NodeEntry['capabilities']>)
        return fa === fb ? 0 : fa > fb ? -1 : 1
      })
  }

  api.post('/models/:id/deploy', async (c) => {
    requireAuth(c)
    const model = getModel(c.req.param('id'))
    const { version, nodeId } = await optionalBody(c, DeployBody)
    const record = pickVersion(model, version)
    const nodes = candidates(model, record, nodeId)
    if (nodes.length === 0) {
      const serving = deployments(model).filter((d) => d.cid === record.cid && d.state !== 'failed')
      if (serving.length > 0) {
        throw conflict(
          `Version ${record.version} of '${model.id}' is already deployed (${serving.map((d) => d.nodeId).join(', ')}) and no other node has room for it.`,
        )
      }
      throw noNodes(model.id, `No node has ${record.sizeBytes} bytes free for its weights.`)
    }
    // Peers that hold the blocks: this gateway, and nodes serving the CID under any id (the weights are the same).
    const providers = [
      ...deps.peer.getMultiaddrs().map((a) => a.toString()),
      ...directory
        .nodes()
        .filter((n) => n.capabilities?.models.some((m) => m.cid === record.cid && m.state === 'ready'))
        .map((n) => `/p2p/${n.peerId}`),
    ]
      .filter((a) => a.includes('/p2p/'))
      .slice(0, 16)
    const refusals: string[] = []
    for (const node of nodes) {
      let answer: DeployResponse
      try {
        answer = await askNode(deps.peer, node.peerId, {
          type: 'deploy',
          model: {
            id: model.id,
            version: record.version,
            cid: record.cid,
            sizeBytes: record.sizeBytes,
            sha256: record.sha256,
          },
          providers,
          records: record.version === 1 ? [record] : [model.versions[0] as ModelRecord, record],
        })
      } catch (err) {
        refusals.push(`${node.peerId}: ${(err as Error).message}`)
        continue
      }
      if (answer.type === 'accepted') {
        return c.json(
          {
            status: answer.state === 'ready' ? 'deployed' : 'deploying',
            nodeId: node.peerId,
            model: model.id,
            version: record.version,
            cid: record.cid,
          },
          202,
        )
      }
      refusals.push(`${node.peerId}: ${answer.message}`)
    }
    throw noNodes(model.id, `Every node refused the deploy (${refusals.join('; ')}).`)
  })

  api.post('/models/:id/undeploy', async (c) => {
    const auth = requireAuth(c)
    const model = getModel(c.req.param('id'))
    if (auth.account.role !== 'admin' && (model.owner !== auth.account.id || model.gateway !== gatewayId)) {
      throw new ApiError(403, 'Only the model owner or an admin may undeploy it.', 'authentication_error', 'forbidden')
    }
    const { nodeId } = await optionalBody(c, DeployBody.pick({ nodeId: true }))
    const targets = [...new Set(deployments(model).map((d) => d.nodeId))].filter((n) => nodeId == null || n === nodeId)
    if (targets.length === 0) throw notFound(`Model '${model.id}' is not deployed${nodeId ? ` on ${nodeId}` : ''}.`)
    const nodes: Array<{ nodeId: string; status: string; error?: string }> = []
    for (const target of targets) {
      try {
        const answer = await askNode(deps.peer, target, { type: 'undeploy', modelId: model.id })
        nodes.push(
          answer.type === 'accepted'
            ? { nodeId: target, status: 'undeployed' }
            : { nodeId: target, status: 'refused', error: answer.message },
        )
      } catch (err) {
        nodes.push({ nodeId: target, status: 'unreachable', error: (err as Error).message })
      }
    }
    return c.json({
      status: nodes.some((n) => n.status === 'undeployed') ? 'undeployed' : 'failed',
      model: model.id,
      nodes,
    })
  })

  // ---- download: a signed URL that expires, streaming from IPFS ----

  const signature = (id: string, version: number, cid: string, expires: number): string =>
    deps.secret.mac('model-download', `${id}\n${version}\n${cid}\n${expires}`)

  api.get('/models/:id/download', (c) => {
    const model = getModel(c.req.param('id'))
    const v = c.req.query('version')
    const version = v == null ? undefined : Number(v)
    if (version != null && !(Number.isInteger(version) && version >= 1)) {
      throw invalidRequest("'version' must be a positive integer.", 'version')
    }
    const record = pickVersion(model, version)
    const expires = Math.floor(Date.now() / 1000) + ttl
    const origin = publicOrigin(c, deps.publicUrl).origin
    const query = new URLSearchParams({
      expires: String(expires),
      signature: signature(model.id, record.version, record.cid, expires),
    })
    return c.json({
      url: `${origin}/api/models/${model.id}/versions/${record.version}/file?${query}`,
      cid: record.cid,
      size: record.sizeBytes,
      sha256: record.sha256,
      version: record.version,
      expiresAt: new Date(expires * 1000).toISOString(),
    })
  })

  api.get('/models/:id/versions/:version/file', async (c) => {
    const model = getModel(c.req.param('id'))
    const record = pickVersion(model, Number(c.req.param('version')) || -1)
    const expires = Number(c.req.query('expires'))
    const given = c.req.query('signature') ?? ''
    const denied = (why: string) => new ApiError(403, why, 'authentication_error', 'forbidden')
    if (!Number.isInteger(expires) || given === '')
      throw denied('This download URL is not signed. Ask GET /api/models/:id/download for one.')
    const want = signature(model.id, record.version, record.cid, expires)
    const a = Buffer.from(given)
    const b = Buffer.from(want)
    if (a.length !== b.length || !timingSafeEqual(a, b)) {
      throw denied('The download signature does not match this URL. Ask GET /api/models/:id/download for a new one.')
    }
    if (expires * 1000 < Date.now())
      throw denied('This download URL has expired. Ask GET /api/models/:id/download for a new one.')
    const size = record.sizeBytes
    const range = parseRange(c.req.header('range'), size)
    if (range === 'unsatisfiable') {
      const err = new ApiError(
        416,
        `The range is outside the file (${size} bytes).`,
        'invalid_request_error',
        'range_not_satisfiable',
      )
      err.headers['Content-Range'] = `bytes */${size}`
      throw err
    }
    const cid = parseCid(record.cid)
    const [start, end] = range ?? [0, size - 1]
    const length = size === 0 ? 0 : end - start + 1
    // Closing the response (a client gone) returns the iterator, which stops reading blocks.
    const stream = streamFrom(store.cat(cid, { offset: start, length }))
    const headers: Record<string, string> = {
      'Content-Type': 'application/octet-stream',
      'Content-Length': String(length),
      'Accept-Ranges': 'bytes',
      'Content-Disposition': `attachment; filename="${model.id}-v${record.version}.gguf"`,
      ETag: `"${record.cid}"`,
      'X-Ipfs-Cid': record.cid,
    }
    if (range != null) headers['Content-Range'] = `bytes ${start}-${end}/${size}`
    return new Response(stream, { status: range != null ? 206 : 200, headers })
  })

  return api
}

/** ReadableStream.from (Node ≥ 20.6; @types/node 20 does not declare it). */
const streamFrom = (source: AsyncIterable<Uint8Array>): ReadableStream<Uint8Array> =>
  (ReadableStream as unknown as { from(s: AsyncIterable<Uint8Array>): ReadableStream<Uint8Array> }).from(source)

/** One `bytes=` range (start-end, start-, -suffix); undefined for none or a form we ignore (multi). */
export function parseRange(header: string | undefined, size: number): [number, number] | 'unsatisfiable' | undefined {
  if (header == null) return undefined
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim())
  if (m == null) return undefined
  const [, a = '', b = ''] = m
  if (a === '' && b === '') return undefined
  let start: number
  let end: number
  if (a === '') {
    const suffix = Number(b)
    if (suffix === 0) return 'unsatisfiable'
    start = Math.max(0, size - suffix)
    end = size - 1
  } else {
    start = Number(a)
    end = b === '' ? size - 1 : Math.min(Number(b), size - 1)
  }
  if (start >= size || start > end) return 'unsatisfiable'
  return [start, end]
}
