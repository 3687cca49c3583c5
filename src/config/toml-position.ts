/**
 * Where a TOML syntax error is. Bun.TOML.parse reports what is wrong but not where, so
 * the place is found by parsing prefixes of the text: the parser reads left to right
 * and fails at the first offending character, so the shortest prefix that already
 * fails with the very message the whole text fails with ends at that character
 * (shorter prefixes fail differently, typically at their end of file). Lines are
 * found first, then the column within the line: a few hundred parses of a short file,
 * on an error path only.
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

/** The position of the syntax error in `text`; null when it parses, or when no prefix fails alike. */
export function tomlErrorPosition(text: string): TomlPosition | null {
  const message = parseError(text);
  if (message === null) return null;
  const lines = text.split("\n");
  let lineStart = 0;
  for (let index = 0; index < lines.length; index++) {
    const line = lines[index] as string;
    // The line with its newline, when it has one: some errors are found at the newline.
    const lineEnd = Math.min(text.length, lineStart + line.length + 1);
    if (parseError(text.slice(0, lineEnd)) === message) {
      for (let end = lineStart + 1; end <= lineEnd; end++) {
        if (parseError(text.slice(0, end)) === message) return { line: index + 1, column: end - lineStart };
      }
      return { line: index + 1, column: 1 };
    }
    lineStart = lineEnd;
  }
  return null;
}
