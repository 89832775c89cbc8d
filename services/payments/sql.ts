// SQL with named parameters. A statement that writes two tables in one round trip is put
// together from parts written by the module that owns each table; every part names its
// values (`:name` in its text) and they are numbered only when the whole statement is sent,
// so no part depends on where another part's parameters end.
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
      for (const [name, value] of Object.entries(part.params)) {
        if (name in params) throw new Error(`SQL parameter :${name} is bound by two parts of one statement`);
        params[name] = value;
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

/** The statement as the database takes it: `$n` placeholders and their values in order. */
export function positional(statement: Sql): { text: string; values: unknown[] } {
  const numbers = new Map<string, number>();
  const values: unknown[] = [];
  const text = statement.text.replace(PLACEHOLDER, (_match, name: string) => {
    let n = numbers.get(name);
    if (n === undefined) {
      if (!(name in statement.params)) throw new Error(`SQL parameter :${name} has no value`);
      n = values.push(statement.params[name]);
      numbers.set(name, n);
    }
    return `$${n}`;
  });
  const unused = Object.keys(statement.params).filter((name) => !numbers.has(name));
  if (unused.length > 0) throw new Error(`SQL parameters bound but not used: ${unused.map((n) => `:${n}`).join(", ")}`);
  return { text, values };
}

/** Sends `statement` to the database. */
export function query<T>(db: Queryable, statement: Sql): Promise<{ rows: T[]; rowCount: number }> {
  const { text, values } = positional(statement);
  return db.query<T>(text, values);
}
