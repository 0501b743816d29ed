// The Models API refuses bad input with a clear 4xx in the docs' error shape, and a refused upload
// leaves nothing behind: no temp file, no registry record, no blocks.
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type RunningGateway, startGateway } from '../../gateway/gateway.ts'
import { type RunningNode, startNode } from '../../node/node.ts'
import { fundedUser, tempDir, tinyModelPath, waitFor } from '../helpers/fixtures.ts'
import { uploadModel } from '../helpers/models.ts'

const MAX_UPLOAD = 1024 * 1024

describe('Models API: bad input', () => {
  let gw: RunningGateway
  let apiKey: string
  let dataDir: string
  let remove: () => Promise<void>
  let tiny: Buffer

  const countFiles = async (dir: string): Promise<number> => {
    let n = 0
    for (const entry of await readdir(dir, { withFileTypes: true, recursive: true }).catch(() => [])) {
      if (entry.isFile()) n++
    }
    return n
  }
  /** What an upload could leave behind: temp files, blocks, registry records. */
  const footprint = async () => ({
    uploads: await countFiles(join(dataDir, 'uploads')),
    blocks: await countFiles(join(dataDir, 'ipfs', 'blocks')),
    records: gw.registry.records().length,
  })

  beforeAll(async () => {
    const d = await tempDir('models-bad')
    dataDir = d.path
    remove = d.remove
    gw = await startGateway({
      dataDir,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      port: 0,
      models: { maxUploadBytes: MAX_UPLOAD, downloadTtlSeconds: 1 },
    })
    apiKey = await fundedUser(gw, 'bad-models@example.com')
    tiny = await readFile(await tinyModelPath())
  })

  afterAll(async () => {
    await gw?.stop()
    await remove?.()
  })

  const expectRefused = async (res: Response, status: number, message: RegExp, code?: string) => {
    expect(res.status).toBe(status)
    const body = (await res.json()) as { error: string; code: string }
    expect(body.error).toMatch(message)
    if (code) expect(body.code).toBe(code)
  }

  it('refuses a file that is not a GGUF, and keeps nothing', async () => {
    const before = await footprint()
    const res = await uploadModel(gw.url, apiKey, { name: 'text' }, { bytes: Buffer.from('hello, not a model at all') })
    await expectRefused(res, 400, /not a GGUF model/, 'INVALID_MODEL')
    expect(await footprint()).toEqual(before)
  })

  it('refuses a truncated GGUF (header fine, tensor data cut short), and keeps nothing', async () => {
    const before = await footprint()
    const res = await uploadModel(gw.url, apiKey, { name: 'cut' }, { bytes: tiny.subarray(0, tiny.length - 1000) })
    await expectRefused(res, 400, /not a valid GGUF model: .*tensor/i, 'INVALID_MODEL')
    expect(await footprint()).toEqual(before)
  })

  it('refuses a file over the upload limit with 413, and keeps nothing', async () => {
    const before = await footprint()
    // A valid GGUF start, then more bytes than the limit.
    const big = Buffer.concat([tiny, Buffer.alloc(MAX_UPLOAD)])
    const res = await uploadModel(gw.url, apiKey, { name: 'too-big' }, { bytes: big })
    await expectRefused(res, 413, new RegExp(`upload limit of ${MAX_UPLOAD} bytes`), 'FILE_TOO_LARGE')
    // Far over: refused from the declared length, before the body is read.
    const huge = Buffer.concat([tiny, Buffer.alloc(4 * MAX_UPLOAD)])
    const early = await uploadModel(gw.url, apiKey, { name: 'too-big' }, { bytes: huge }).catch((err: Error) => err)
    if (early instanceof Error) expect.fail(`the client saw no answer: ${early.message} ${String(early.cause)}`)
    await expectRefused(early, 413, /upload limit/, 'FILE_TOO_LARGE')
    expect(await footprint()).toEqual(before)
  })

  it('refuses missing or invalid fields', async () => {
    const before = await footprint()
    await expectRefused(await uploadModel(gw.url, apiKey, { name: 'no-file' }), 400, /'file' is required/)
    await expectRefused(await uploadModel(gw.url, apiKey, {}, { bytes: tiny }), 400, /'name' is required/)
    await expectRefused(
      await uploadModel(gw.url, apiKey, { name: 'x', category: 'poetry' }, { bytes: tiny }),
      400,
      /'category' must be one of chat/,
    )
    await expectRefused(await uploadModel(gw.url, apiKey, { name: '!!!' }, { bytes: tiny }), 400, /letters or digits/)
    await expectRefused(await uploadModel(gw.url, undefined, { name: 'anon' }, { bytes: tiny }), 401, /API key/)
    const json = await fetch(`${gw.url}/api/models/upload`, {
      method: 'POST',
      headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'x' }),
    })
    await expectRefused(json, 400, /multipart\/form-data/)
    expect(await footprint()).toEqual(before)
  })

  it("refuses a name that belongs to another user's model (409)", async () => {
    const ok = await uploadModel(gw.url, apiKey, { name: 'taken' }, { bytes: tiny })
    expect(ok.status).toBe(201)
    const other = await fundedUser(gw, 'other-models@example.com')
    await expectRefused(
      await uploadModel(gw.url, other, { name: 'Taken' }, { bytes: tiny }),
      409,
      /belongs to someone else/,
    )
    const versions = (await (await fetch(`${gw.url}/api/models/taken/versions`)).json()) as { versions: unknown[] }
    expect(versions.versions).toHaveLength(1)
  })

  it("refuses a provider model's name: an upload cannot catch other users' requests for it (409)", async () => {
    const before = await footprint()
    for (const name of ['llama-3.3-70b-instruct', 'llama-3.3-70b', 'Meta-Llama-3.3-70B-Instruct']) {
      await expectRefused(
        await uploadModel(gw.url, apiKey, { name }, { bytes: tiny }),
        409,
        /is the name of a provider model/,
      )
    }
    expect((await footprint()).records).toBe(before.records)
  })

  it('refuses an altered, unsigned or expired download signature (403)', async () => {
    const link = (await (await fetch(`${gw.url}/api/models/taken/download`)).json()) as { url: string }
    const url = new URL(link.url)
    const good = await fetch(url)
    expect(good.status).toBe(200)
    expect(Buffer.from(await good.arrayBuffer()).equals(tiny)).toBe(true)

    const altered = new URL(url)
    altered.searchParams.set('expires', String(Number(url.searchParams.get('expires')) + 3600))
    await expectRefused(await fetch(altered), 403, /signature does not match/, 'FORBIDDEN')
    const otherVersion = new URL(url.toString().replace('/versions/1/', '/versions/2/'))
    await expectRefused(await fetch(otherVersion), 404, /no version 2/)
    const unsigned = new URL(url)
    unsigned.search = ''
    await expectRefused(await fetch(unsigned), 403, /not signed/)
    const forged = new URL(url)
    forged.searchParams.set('signature', 'A'.repeat(43))
    await expectRefused(await fetch(forged), 403, /signature does not match/)

    await new Promise((r) => setTimeout(r, 2100))
    await expectRefused(await fetch(url), 403, /expired/)
  })

  it('answers 404 for unknown models and versions, 400 for a bad deploy body, 503 when no node can take it', async () => {
    const auth = { authorization: `Bearer ${apiKey}` }
    await expectRefused(
      await fetch(`${gw.url}/api/models/nope/deploy`, { method: 'POST', headers: auth }),
      404,
      /Model 'nope' does not exist/,
      'NOT_FOUND',
    )
    await expectRefused(await fetch(`${gw.url}/api/models/public/nope`), 404, /does not exist/)
    await expectRefused(await fetch(`${gw.url}/api/models/nope/versions`), 404, /does not exist/)
    await expectRefused(await fetch(`${gw.url}/api/models/nope/download`), 404, /does not exist/)
    await expectRefused(await fetch(`${gw.url}/api/models/taken/download?version=9`), 404, /no version 9/)
    await expectRefused(await fetch(`${gw.url}/api/models/taken/download?version=zero`), 400, /positive integer/)
    await expectRefused(
      await fetch(`${gw.url}/api/models/taken/deploy`, {
        method: 'POST',
        headers: { ...auth, 'content-type': 'application/json' },
        body: JSON.stringify({ version: 'latest' }),
      }),
      400,
      /'version'/,
    )
    await expectRefused(await fetch(`${gw.url}/api/models/taken/deploy`, { method: 'POST' }), 401, /API key/)
    await expectRefused(
      await fetch(`${gw.url}/api/models/taken/deploy`, { method: 'POST', headers: auth }),
      503,
      /No GPU nodes available/,
      'NO_NODES_AVAILABLE',
    )
    await expectRefused(
      await fetch(`${gw.url}/api/models/taken/undeploy`, { method: 'POST', headers: auth }),
      404,
      /not deployed/,
    )
  })

  it('a node that takes no deploys, or has no room, is not sent the model (503 saying why)', async () => {
    const auth = { authorization: `Bearer ${apiKey}` }
    const nodes: Array<{ node: RunningNode; dir: { remove: () => Promise<void> } }> = []
    for (const [name, options] of [
      ['closed', { acceptDeploys: false }],
      ['full', { modelMemoryBytes: 1000 }],
    ] as const) {
      const dir = await tempDir(`models-bad-${name}`)
      const node = await startNode({
        dataDir: dir.path,
        listen: ['/ip4/127.0.0.1/tcp/0'],
        bootstrap: gw.multiaddrs(),
        models: [],
        gpu: false,
        heartbeatIntervalMs: 200,
        ...options,
      })
      nodes.push({ node, dir })
    }
    try {
      await waitFor(
        () => nodes.every(({ node }) => gw.directory.get(node.peerId)?.capabilities != null),
        10_000,
        'both nodes',
      )
      await expectRefused(
        await fetch(`${gw.url}/api/models/taken/deploy`, { method: 'POST', headers: auth }),
        503,
        new RegExp(`No node has ${tiny.length} bytes free`),
        'NO_NODES_AVAILABLE',
      )
      // Named explicitly: the closed one is not a candidate; the full one refuses for room.
      const closed = nodes[0]?.node.peerId as string
      const full = nodes[1]?.node.peerId as string
      const pin = (nodeId: string) =>
        fetch(`${gw.url}/api/models/taken/deploy`, {
          method: 'POST',
          headers: { ...auth, 'content-type': 'application/json' },
          body: JSON.stringify({ nodeId }),
        })
      await expectRefused(await pin(closed), 404, /No node .* that takes deploys/)
      await expectRefused(await pin(full), 503, /has 1000 free for weights/)
    } finally {
      for (const { node, dir } of nodes) {
        await node.stop()
        await dir.remove()
      }
    }
  })
})
