// gateway.publicUrl: the gateway's address when clients reach it through a proxy. One check, used by
// the config and by the gateway at start: http(s), nothing but an origin (the API is served at its root).

/** The public URL, checked; an Error naming publicUrl otherwise. */
export function parsePublicUrl(value: string): URL {
  let url: URL
  try {
    url = new URL(value)
  } catch {
    throw new Error(`publicUrl ${JSON.stringify(value)} is not a URL`)
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new Error('publicUrl must be http(s)')
  const more = (url.pathname !== '/' && url.pathname !== '') || url.search !== '' || url.hash !== ''
  if (more || url.username !== '' || url.password !== '' || /@/.test(value)) {
    throw new Error('publicUrl must be an origin only, like https://api.example.com (the API is served at its root)')
  }
  return url
}

/** Whether the value is a valid public URL (for the config schema). */
export function isPublicUrl(value: string): boolean {
  try {
    parsePublicUrl(value)
    return true
  } catch {
    return false
  }
}
