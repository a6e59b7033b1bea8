//! Python logging's %-style format strings (`%(asctime)s [%(process)d] %(message)s`),
//! compiled once into pieces for `log` to render: the LogRecord fields rgun's log
//! records have, with `-`/width as in `%(levelname)-8s`. Used by a logging
//! configuration's formatters (`config::logconfig`).

/// A Python logging format, compiled: `%(asctime)s [%(process)d] %(message)s`.
#[derive(Debug, Clone, PartialEq)]
pub struct LineFormat {
    pub pieces: Vec<Piece>,
    /// strftime format for `asctime` (Python's default: `%Y-%m-%d %H:%M:%S,mmm`).
    pub datefmt: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Literal(String),
    /// A LogRecord attribute, with its `-`/width (`%(levelname)-8s`).
    Field {
        name: Field,
        left: bool,
        width: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Asctime,
    Created,
    Levelname,
    Levelno,
    Message,
    Name,
    Process,
}

impl LineFormat {
    /// The format as Python's `logging.Formatter` takes it (the Python loggers a
    /// worker sets up for the application write the same lines as rgun's own).
    pub fn python(&self) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(s) => out.push_str(&s.replace('%', "%%")),
                Piece::Field { name, left, width } => {
                    let (name, conv) = match name {
                        Field::Asctime => ("asctime", 's'),
                        Field::Created => ("created", 'f'),
                        Field::Levelname => ("levelname", 's'),
                        Field::Levelno => ("levelno", 'd'),
                        Field::Message => ("message", 's'),
                        Field::Name => ("name", 's'),
                        Field::Process => ("process", 'd'),
                    };
                    let align = if *left { "-" } else { "" };
                    let width = if *width > 0 {
                        width.to_string()
                    } else {
                        String::new()
                    };
                    out.push_str(&format!("%({name}){align}{width}{conv}"));
                }
            }
        }
        out
    }
}

/// Compiles `%(name)[-][width]s|d|f` fields and literal text (`%%` is a `%`).
pub fn compile(fmt: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut rest = fmt;
    while let Some(i) = rest.find('%') {
        literal.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("%%") {
            literal.push('%');
            rest = after;
            continue;
        }
        let Some((name, after)) = rest.strip_prefix("%(").and_then(|r| r.split_once(')')) else {
            return Err(format!("{rest:?}: only %(name)s fields are supported"));
        };
        let spec_len = after
            .find(|c: char| c.is_ascii_alphabetic())
            .ok_or_else(|| format!("%({name}) has no conversion"))?;
        let (spec, conv) = (&after[..spec_len], &after[spec_len..spec_len + 1]);
        if !["s", "d", "f", "r"].contains(&conv) {
            return Err(format!(
                "%({name}){spec}{conv}: conversion {conv:?} is not supported"
            ));
        }
        let left = spec.starts_with('-');
        let width = spec
            .trim_start_matches('-')
            .split('.')
            .next()
            .unwrap_or("")
            .parse()
            .unwrap_or(0);
        let field = match name {
            "asctime" => Field::Asctime,
            "created" => Field::Created,
            "levelname" => Field::Levelname,
            "levelno" => Field::Levelno,
            "message" => Field::Message,
            "name" => Field::Name,
            "process" => Field::Process,
            other => return Err(format!(
                "%({other}) is not supported (asctime, created, levelname, levelno, message, name, process)"
            )),
        };
        if !literal.is_empty() {
            pieces.push(Piece::Literal(std::mem::take(&mut literal)));
        }
        pieces.push(Piece::Field {
            name: field,
            left,
            width,
        });
        rest = &after[spec_len + 1..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compiled_format_is_given_back_to_python_as_it_reads() {
        for fmt in [
            "%(asctime)s %(levelname)-8s [%(process)d] 100%% %(message)s",
            "%(created)f %(levelno)d %(name)s: %(message)s",
            "%(levelname)8s|%(message)s",
        ] {
            let format = LineFormat {
                pieces: compile(fmt).unwrap(),
                datefmt: None,
            };
            assert_eq!(format.python(), fmt);
        }
    }
}
