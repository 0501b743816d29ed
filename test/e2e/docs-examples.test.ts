// The docs' curl examples for accounts, inference, billing and health, run as written with the
// real curl against a started gateway (only the base URL and YOUR_KEY are replaced).
import { execFile } from 'node:child_process'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type RunningGateway, startGateway } from '../../gateway/gateway.ts'
import { type RunningNode, startNode } from '../../node/node.ts'
import { tempDir, tinyModelPath, waitFor } from '../helpers/fixtures.ts'
import { type StandIn, startStandIn } from '../helpers/upstream.ts'

const BASE = 'https://api.clusterprotocol.ai'

function sh(script: string): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile('bash', ['-c', script], { maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, out: `${stdout}${stderr}` }),
    )
  })
}

describe('the docs’ curl examples, as written', () => {
  let gw: RunningGateway
  let node: RunningNode
  let key = ''
  let venice: StandIn
  const cleanups: Array<() => Promise<void>> = []
  const run = (example: string): Promise<{ code: number; out: string }> =>
    sh(example.replaceAll(BASE, gw.url).replaceAll('sk-cluster-YOUR_KEY', key).replaceAll('YOUR_API_KEY', key))

  beforeAll(async () => {
    expect((await sh('command -v curl')).code, 'curl must be installed').toBe(0)
    const g = await tempDir('docs-gw')
    const n = await tempDir('docs-node')
    cleanups.push(g.remove, n.remove)
    // Venice, stood in for on loopback: the docs' venice-pinned examples go to it.
    venice = await startStandIn({ name: 'venice', apiKey: 'venice-key-for-tests' })
    cleanups.push(() => venice.close())
    gw = await startGateway({
      dataDir: g.path,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      port: 0,
      providers: { venice: { apiKey: 'venice-key-for-tests', baseUrl: venice.url } },
    })
    const model = await tinyModelPath()
    // The tiny model under the docs' model names, so the examples' requests are served as written.
    node = await startNode({
      dataDir: n.path,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: gw.multiaddrs(),
      models: [
        { path: model, id: 'llama-3.1-70b' },
        { path: model, id: 'llama-3.3-70b-instruct' },
      ],
      threads: 1,
      slots: 2,
      gpu: false,
      heartbeatIntervalMs: 300,
    })
    await waitFor(() => gw.directory.nodesServing('llama-3.3-70b-instruct').length === 1, 15_000, 'the node')
  })

  afterAll(async () => {
    await node?.stop()
    await gw?.stop()
    await Promise.all(cleanups.map((f) => f()))
  })

  it('1. register and get your API key', async () => {
    const { code, out } = await run(`curl -s -X POST https://api.clusterprotocol.ai/api/auth/register \\
-H "Content-Type: application/json" \\
-d '{"email": "dev@example.com", "password": "securepassword"}'`)
    expect(code).toBe(0)
    const body = JSON.parse(out) as { userId: string; email: string; apiKey: string; balance: string }
    expect(body).toMatchObject({ email: 'dev@example.com', balance: '0.00' })
    expect(body.userId).toBeTruthy()
    expect(body.apiKey).toMatch(/^sk-cluster-/)
    key = body.apiKey
    // Deposits arrive in a later step; the operator credits the account for now.
    const account = await gw.ledger.findAccountByEmail('dev@example.com')
    await gw.ledger.credit(account?.id as string, 1_000_000n, { type: 'credit' })
  })

  it("fine-tuning, as the docs show it: not built yet, and said so (501 in the docs' error shape; 401 without a key)", async () => {
    const create = await run(`curl -s -w '\\n%{http_code}' -X POST https://api.clusterprotocol.ai/api/finetune/jobs \\
-H "Authorization: Bearer sk-cluster-YOUR_KEY" \\
-H "Content-Type: application/json" \\
-d '{
"baseModel": "llama-3.1-8b",
"trainingFile": "https://example.com/data.jsonl",
"suffix": "customer-support-v1",
"epochs": 3,
"learningRate": 2e-5,
"loraRank": 16,
"loraAlpha": 32
}'`)
    const [body, status] = create.out.split('\n')
    expect(status).toBe('501')
    expect(JSON.parse(body as string)).toEqual({
      error: expect.stringMatching(/^Fine-tuning is not available/),
      code: 'NOT_IMPLEMENTED',
    })
    const job = await run(
      `curl -s -o /dev/null -w '%{http_code}' https://api.clusterprotocol.ai/api/finetune/jobs/ft_job_abc123 -H "Authorization: Bearer sk-cluster-YOUR_KEY"`,
    )
    expect(job.out).toBe('501')
    const anonymous = await run(
      `curl -s -o /dev/null -w '%{http_code}' https://api.clusterprotocol.ai/api/finetune/jobs`,
    )
    expect(anonymous.out).toBe('401')
  })

  it('get current user', async () => {
    const { out } = await run(
      'curl -s https://api.clusterprotocol.ai/api/auth/me \\ -H "Authorization: Bearer sk-cluster-YOUR_KEY"'.replace(
        '\\ ',
        '',
      ),
    )
    expect(JSON.parse(out)).toMatchObject({ email: 'dev@example.com', balance: '1.00' })
  })

  it('2. run your first inference', async () => {
    const { out } = await run(`curl -s https://api.clusterprotocol.ai/v1/chat/completions \\
-H "Authorization: Bearer sk-cluster-YOUR_KEY" \\
-H "Content-Type: application/json" \\
-d '{
"model": "llama-3.1-70b",
"messages": [{"role": "user", "content": "Hello!"}]
}'`)
    const body = JSON.parse(out) as { object: string; model: string; choices: Array<{ message: { role: string } }> }
    expect(body.object).toBe('chat.completion')
    expect(body.model).toBe('llama-3.1-70b')
    expect(body.choices[0]?.message.role).toBe('assistant')
  })

  it('non-streaming', async () => {
    const { out } = await run(`curl -s -X POST https://api.clusterprotocol.ai/v1/chat/completions \\
-H "Authorization: Bearer sk-cluster-YOUR_KEY" \\
-H "Content-Type: application/json" \\
-d '{
"model": "llama-3.3-70b-instruct",
"messages": [
{"role": "system", "content": "You are a helpful assistant."},
{"role": "user", "content": "Explain quantum computing in 2 sentences."}
],
"temperature": 0.7,
"max_tokens": 256
}'`)
    const body = JSON.parse(out) as Record<string, unknown>
    expect(Object.keys(body)).toEqual(expect.arrayContaining(['id', 'object', 'created', 'model', 'choices', 'usage']))
    expect(body.id).toMatch(/^chatcmpl-/)
    const usage = body.usage as { prompt_tokens: number; completion_tokens: number; total_tokens: number }
    expect(usage.total_tokens).toBe(usage.prompt_tokens + usage.completion_tokens)
    expect(usage.completion_tokens).toBeLessThanOrEqual(256)
  })

  it('streaming (SSE) ends with [DONE]', async () => {
    const { out } = await run(`curl -s -X POST https://api.clusterprotocol.ai/v1/chat/completions \\
-H "Authorization: Bearer sk-cluster-YOUR_KEY" \\
-H "Content-Type: application/json" \\
-d '{
"model": "llama-3.1-70b",
"messages": [{"role": "user", "content": "Write a haiku about AI"}],
"stream": true
}'`)
    const events = out
      .split('\n')
      .filter((l) => l.startsWith('data: '))
      .map((l) => l.slice(6))
    expect(events.at(-1)).toBe('[DONE]')
    const chunks = events
      .slice(0, -1)
      .map((e) => JSON.parse(e) as { id: string; choices: Array<{ delta: { content?: string } }> })
    // The role chunk first and the finish chunk last (the random-weight model may end at any token).
    expect(chunks.length).toBeGreaterThanOrEqual(2)
    expect((chunks[0]?.choices[0]?.delta as { role?: string } | undefined)?.role).toBe('assistant')
    const last = chunks.at(-1) as { choices: Array<{ finish_reason?: string | null }> } | undefined
    expect(last?.choices[0]?.finish_reason ?? '').toMatch(/^(stop|length)$/)
    expect(new Set(chunks.map((c) => c.id)).size).toBe(1)
  })

  it('venice-pinned request goes to Venice, with the model under its Venice id', async () => {
    const { out } = await run(`curl -s -X POST https://api.clusterprotocol.ai/v1/chat/completions \\
-H "Authorization: Bearer sk-cluster-YOUR_KEY" \\
-H "Content-Type: application/json" \\
-d '{
"model": "llama-3.3-70b-instruct",
"provider": "venice",
"messages": [
{"role": "user", "content": "Explain zero-knowledge proofs simply."}
],
"temperature": 0.7,
"max_tokens": 256
}'`)
    const body = JSON.parse(out) as { object: string; choices: Array<{ message: { content: string } }> }
    expect(body.object).toBe('chat.completion')
    expect(body.choices[0]?.message.content).toBe('Hello from venice')
    const sent = venice.requestsTo('/v1/chat/completions').at(-1)
    expect(sent?.body).toMatchObject({ model: 'llama-3.3-70b', temperature: 0.7, max_tokens: 256 })
    expect(sent?.body).not.toHaveProperty('provider')
  })

  it('dashboard stats', async () => {
    const { out } = await run(
      'curl -s https://api.clusterprotocol.ai/api/user/stats \\ -H "Authorization: Bearer sk-cluster-YOUR_KEY"'.replace(
        '\\ ',
        '',
      ),
    )
    const body = JSON.parse(out) as { balance: string; totalCalls: number; modelsDeployed: number; totalSpent: string }
    expect(body.totalCalls).toBe(4)
    expect(body.modelsDeployed).toBe(0)
    expect(body.totalSpent).not.toBe('0.00')
  })

  it('health', async () => {
    const { out } = await run('curl -s https://api.clusterprotocol.ai/health')
    const body = JSON.parse(out) as { status: string; uptime: number }
    expect(body.status).toBe('ok')
    expect(Number.isInteger(body.uptime)).toBe(true)
  })

  it('no auth header on a paid endpoint is refused before any work', async () => {
    const { out } = await run(`curl -s -i -X POST https://api.clusterprotocol.ai/v1/chat/completions \\
-H "Content-Type: application/json" \\
-d '{"model": "llama-3.3-70b-instruct", "messages": [{"role": "user", "content": "Hello"}]}'`)
    // 401 until x402 arrives (then: 402 with payment-required).
    expect(out).toMatch(/^HTTP\/1\.1 401/)
    expect(out.toLowerCase()).toContain('x-ratelimit-limit: ')
  })
})
