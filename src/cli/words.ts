/** "1 event", "3 events": a count with its noun in the number it takes. */
export function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}
