// Sign-up buckets: both or neither are taken, and IPv6 clients share a bucket per /64.
import { describe, expect, it } from 'vitest'
import { addressKey, RegistrationLimits } from '../../gateway/rate-limit.ts'

describe('RegistrationLimits', () => {
  it('keys IPv4 as it is and IPv6 by its /64', () => {
    expect(addressKey('203.0.113.7')).toBe('203.0.113.7')
    expect(addressKey('::ffff:203.0.113.7')).toBe('::ffff:203.0.113.7')
    expect(addressKey('2001:db8:0:1::1')).toBe(addressKey('2001:0db8:0000:0001:ffff:1:2:3'))
    expect(addressKey('2001:db8:0:1::1')).not.toBe(addressKey('2001:db8:0:2::1'))
    expect(addressKey('::1')).toBe('0:0:0:0::/64')
  })

  it('a refusal by one bucket takes nothing from the other', () => {
    let now = 0
    const limits = new RegistrationLimits(
      { perAddress: { capacity: 2, refillPerSecond: 0.001 }, global: { capacity: 3, refillPerSecond: 0.001 } },
      () => now,
    )
    expect(limits.take('10.0.0.1').allowed).toBe(true)
    expect(limits.take('10.0.0.1').allowed).toBe(true)
    const mine = limits.take('10.0.0.1')
    expect(mine).toMatchObject({ allowed: false, limit: 2 })
    expect(mine.retryAfter).toBeGreaterThan(0)
    // The refused one did not use the global bucket: one is left for another address.
    expect(limits.take('10.0.0.2').allowed).toBe(true)
    expect(limits.take('10.0.0.3')).toMatchObject({ allowed: false, limit: 3 })
    now += 1_000_000
    expect(limits.take('10.0.0.3').allowed).toBe(true)
  })
})
