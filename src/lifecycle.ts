// Starting a peer is a sequence of parts; each part started pushes how to stop it. stop() and a
// failure part-way undo what was started, in reverse order, each step once, none stopping the rest.

/** Steps that undo what was started, run last-first. */
export type Teardown = Array<() => unknown>

/**
 * Runs `start` with a teardown list; if it throws, undoes what it had started and rethrows. The
 * `undo` it is given is what the started thing's stop() calls.
 */
export async function startWithTeardown<T>(
  start: (teardown: Teardown, undo: () => Promise<void>) => Promise<T>,
): Promise<T> {
  const teardown: Teardown = []
  const undo = async (): Promise<void> => {
    for (const step of teardown.splice(0).reverse())
      await Promise.resolve()
        .then(step)
        .catch(() => undefined)
  }
  try {
    return await start(teardown, undo)
  } catch (err) {
    await undo()
    throw err
  }
}
