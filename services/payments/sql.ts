// SQL with named parameters. A statement that writes two tables in one round trip is put
// together from parts written by the module that owns each table; every part names its
// values (`:name` in its text) and they are numbered only when the whole statement is sent,
// so no part depends on where another part's parameters end.
import { LRUCache } from "lru-cache";
import type { Queryable } from "../runtime/db/database.js";

/** SQL text whose parameters are named (`:name`), with their values. */
export interface Sql {
  readonly text: string;
  readonly params: Readonly<Record<string, unknown>>;
}

export function sql(text: string, params: Record<string, unknown> = {}): Sql {
  return { text, params };
}

/**
 * Text with parts spliced in (`${part}`; an empty string splices nothing), their parameters
 * gathered. Two parts binding the same name is a mistake, refused here.
 */
export function compose(strings: TemplateStringsArray, ...parts: (Sql | "")[]): Sql {
  let text = strings[0]!;
  const params: Record<string, unknown> = {};
  parts.forEach((part, i) => {
    if (part !== "") {
      for (const name in part.params) {
        if (Object.hasOwn(params, name)) throw new Error(`SQL parameter :${name} is bound by two parts of one statement`);
        params[name] = part.params[name];
      }
      text += part.text;
    }
    text += strings[i + 1]!;
  });
  return { text, params };
}

/** The parts one after the other, `separator` between them, their parameters gathered as compose() does. */
export function join(parts: Sql[], separator: string): Sql {
  return parts.reduce((joined, part, i) => (i === 0 ? part : compose`${joined}${sql(separator)}${part}`), sql(""));
}

/** `:name`, not the second colon of a `::type` cast. */
const PLACEHOLDER = /(?<!:):([A-Za-z_][A-Za-z0-9_]*)/g;

/** A statement's text numbered: `$n` placeholders, and the name each number stands for. */
interface Numbered {
  text: string;
  names: string[];
}

/**
 * Statements numbered so far, by their named text. Values are never part of the text, so
 * there are as many as there are statement shapes (a few dozen); the bound is a safeguard.
 */
const numbered = new LRUCache<string, Numbered>({ max: 1_000 });

function numberedText(text: string): Numbered {
  let found = numbered.get(text);
  if (!found) {
    const names: string[] = [];
    const positions = new Map<string, number>();
    const replaced = text.replace(PLACEHOLDER, (_match, name: string) => {
      let n = positions.get(name);
      if (n === undefined) {
        n = names.push(name);
        positions.set(name, n);
      }
      return `$${n}`;
    });
    found = { text: replaced, names };
    numbered.set(text, found);
  }
  return found;
}

/** The statement as the database takes it: `$n` placeholders and their values in order. */
function positional(statement: Sql): { text: string; values: unknown[] } {
  const { text, names } = numberedText(statement.text);
  const values = names.map((name) => {
    if (!Object.hasOwn(statement.params, name)) throw new Error(`SQL parameter :${name} has no value`);
    return statement.params[name];
  });
  if (Object.keys(statement.params).length !== names.length) {
    const unused = Object.keys(statement.params).filter((name) => !names.includes(name));
    throw new Error(`SQL parameters bound but not used: ${unused.map((n) => `:${n}`).join(", ")}`);
  }
  return { text, values };
}

/** Sends `statement` to the database. */
export function query<T>(db: Queryable, statement: Sql): Promise<{ rows: T[]; rowCount: number }> {
  const { text, values } = positional(statement);
  return db.query<T>(text, values);
}
