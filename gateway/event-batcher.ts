// Completed inferences go to the mesh in batches: signing and sending a gossip message costs a
// gateway ~0.2–0.4 ms of CPU, so one per call would cap a busy gateway; one per interval (or per
// MAX_EVENTS_PER_BATCH events) costs the same for one call or sixty-four. A lone event goes as it is.
import { type ClusterEvent, type InferenceCompleteEvent, MAX_EVENTS_PER_BATCH } from '../protocols/index.ts'

export class EventBatcher {
  private pending: InferenceCompleteEvent[] = []
  private timer: NodeJS.Timeout | undefined

  constructor(
    private readonly publish: (event: ClusterEvent) => void,
    /** How long an event may wait for others. @default 200 */
    private readonly intervalMs = 200,
  ) {}

  add(event: InferenceCompleteEvent): void {
    this.pending.push(event)
    if (this.pending.length >= MAX_EVENTS_PER_BATCH) this.flush()
    else if (this.timer == null) {
      this.timer = setTimeout(() => this.flush(), this.intervalMs)
      this.timer.unref()
    }
  }

  flush(): void {
    clearTimeout(this.timer)
    this.timer = undefined
    const events = this.pending
    if (events.length === 0) return
    this.pending = []
    this.publish(
      events.length === 1 ? (events[0] as InferenceCompleteEvent) : { v: 1, type: 'inference:batch', events },
    )
  }
}
