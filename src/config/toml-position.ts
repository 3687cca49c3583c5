/**
 * Where a TOML syntax error is. Bun.TOML.parse reports what is wrong but not where, so
 * the place is found by parsing prefixes of the text: the parser reads left to right
 * and fails at the first offending character, so the shortest prefix that already
 * fails with the very message the whole text fails with ends at that character
 * (shorter prefixes fail differently, typically at their end of file). Every prefix at
 * least that long fails alike, so the shortest one is found by bisection: over line
 * ends first, then over the characters of that line. A 1 MB file takes some forty
 * parses rather than one per line (a parse of every prefix took half a minute).
 */

/** 1-based line and column of a character, or null when the error could not be placed. */
export type TomlPosition = { readonly line: number; readonly column: number };

function parseError(text: string): string | null {
  try {
    Bun.TOML.parse(text);
    return null;
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
}

/**
 * The least index in `low..high` for which `fails` holds, given that it holds at `high`
 * and, from the least such index on, at every index after it.
 */
function leastFailing(low: number, high: number, fails: (index: number) => boolean): number {
  while (low < high) {
    const middle = low + Math.floor((high - low) / 2);
    if (fails(middle)) high = middle;
    else low = middle + 1;
  }
  return high;
}

/** The position of the syntax error in `text`; null when it parses. */
export function tomlErrorPosition(text: string): TomlPosition | null {
  const message = parseError(text);
  if (message === null) return null;
  const failsAlike = (end: number): boolean => parseError(text.slice(0, end)) === message;
  // Where each line ends, with its newline when it has one: some errors are found at the newline.
  const lineEnds: number[] = [];
  for (let newline = text.indexOf("\n"); newline !== -1; newline = text.indexOf("\n", newline + 1)) lineEnds.push(newline + 1);
  if (lineEnds.at(-1) !== text.length) lineEnds.push(text.length);
  const lineIndex = leastFailing(0, lineEnds.length - 1, (index) => failsAlike(lineEnds[index] as number));
  const lineStart = lineIndex === 0 ? 0 : (lineEnds[lineIndex - 1] as number);
  // The whole text fails alike, so the last line end does, and so does the line found.
  const end = leastFailing(lineStart + 1, lineEnds[lineIndex] as number, failsAlike);
  return { line: lineIndex + 1, column: end - lineStart };
}
