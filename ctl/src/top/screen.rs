//! The full-screen layout: the header (master, workers, traffic) and the last
//! action's result, the worker table with the selected row and sort column marked,
//! the event pane, the keys; a pane over it for a stack or a failed reload's error.
//! Draws a [`View`]; it changes nothing.

use std::collections::VecDeque;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, Wrap};
use ratatui::Frame as Canvas;

use super::frame::Frame;
use super::text::{header_lines, sorted, Column, COLUMNS};

/// A pane over the table: a worker's stacks, a failed reload's error.
pub struct Overlay {
    pub title: String,
    pub text: String,
    pub scroll: u16,
}

/// Everything the screen shows.
pub struct View {
    pub frame: Option<Frame>,
    pub sort: Column,
    pub reverse: bool,
    pub selected_pid: Option<i32>,
    pub events: VecDeque<String>,
    /// The last action's result, or what is running.
    pub message: String,
    pub overlay: Option<Overlay>,
}

pub const KEYS: &str =
    "q quit  +/- scale  r reload  s stack  up/down select  </> sort column  i reverse";

/// The rows in the order shown.
pub fn rows(view: &View) -> Vec<super::frame::Row> {
    view.frame
        .as_ref()
        .map(|f| sorted(f, view.sort, view.reverse))
        .unwrap_or_default()
}

pub fn draw(canvas: &mut Canvas, view: &View) {
    let [header, table, events, keys] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Min(4),
        Constraint::Length(8),
        Constraint::Length(1),
    ])
    .areas(canvas.area());
    let mut lines: Vec<Line> = match &view.frame {
        Some(f) => header_lines(f).into_iter().map(Line::from).collect(),
        None => vec![Line::from("waiting for the first status answer...")],
    };
    lines.push(Line::from(view.message.clone()).style(Style::new().add_modifier(Modifier::BOLD)));
    canvas.render_widget(Paragraph::new(lines), header);
    draw_table(canvas, view, table);
    let shown = events.height.saturating_sub(2) as usize;
    let event_lines: Vec<Line> = view
        .events
        .iter()
        .skip(view.events.len().saturating_sub(shown))
        .map(|e| Line::from(e.as_str()))
        .collect();
    canvas.render_widget(
        Paragraph::new(event_lines).block(Block::new().borders(Borders::TOP).title(" events ")),
        events,
    );
    canvas.render_widget(Paragraph::new(KEYS), keys);
    if let Some(o) = &view.overlay {
        let area = inset(canvas.area());
        canvas.render_widget(Clear, area);
        canvas.render_widget(
            Paragraph::new(o.text.as_str())
                .wrap(Wrap { trim: false })
                .scroll((o.scroll, 0))
                .block(
                    Block::new()
                        .borders(Borders::ALL)
                        .title(format!(" {} (up/down scroll, Esc or q close) ", o.title)),
                ),
            area,
        );
    }
}

fn draw_table(canvas: &mut Canvas, view: &View, area: Rect) {
    let titles = COLUMNS.iter().map(|&c| {
        let mark = if c == view.sort {
            if view.reverse {
                "^"
            } else {
                "v"
            }
        } else {
            ""
        };
        Cell::from(format!("{}{mark}", c.title()))
    });
    let rows = rows(view);
    let body = rows.iter().map(|r| {
        let style = if Some(r.pid) == view.selected_pid {
            Style::new().add_modifier(Modifier::REVERSED)
        } else {
            Style::new()
        };
        Row::new(COLUMNS.iter().map(|c| Cell::from(c.cell(r)))).style(style)
    });
    let widths = COLUMNS.iter().map(|c| match c {
        Column::Current => Constraint::Min(c.width()),
        _ => Constraint::Length(c.width()),
    });
    let title = format!(
        " workers: {} sorted by {} ",
        rows.len(),
        view.sort.title().to_lowercase()
    );
    let table = Table::new(body, widths)
        .header(Row::new(titles).style(Style::new().add_modifier(Modifier::BOLD)))
        .block(Block::new().borders(Borders::TOP).title(title));
    canvas.render_widget(table, area);
}

/// The overlay's area: the screen less a margin.
fn inset(r: Rect) -> Rect {
    let (dx, dy) = (r.width / 20, r.height / 10);
    Rect::new(
        r.x + dx,
        r.y + dy,
        r.width.saturating_sub(2 * dx),
        r.height.saturating_sub(2 * dy),
    )
}
