//! The static site: `products/ID.html` for each product and `index.html` listing them, generated
//! from the site listener's replica of the catalog.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::replica::{Replica, apply_with, write_atomically};
use super::{Product, ProductChanged};

/// The site's folder and its replica.
#[derive(Debug)]
pub struct Site {
    dir: PathBuf,
    replica: Mutex<Replica>,
}

impl Site {
    /// The site in `dir` (created if need be), with the replica it was last generated from.
    pub fn open(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir.join("products"))?;
        let replica = Mutex::new(Replica::load(&dir.join(".replica.json"))?);
        Ok(Self { dir, replica })
    }

    /// Regenerates (or deletes) the changed product's page and the index, unless the change is
    /// older than what the site shows. Returns whether it was applied.
    pub fn apply(&self, change: &ProductChanged) -> anyhow::Result<bool> {
        apply_with(
            &self.replica,
            &self.dir.join(".replica.json"),
            change,
            |replica| {
                let page = page_path(&self.dir, change.id());
                match change {
                    ProductChanged::Saved(product) => {
                        write_atomically(&page, render_page(product).as_bytes())?
                    }
                    ProductChanged::Deleted { .. } => match std::fs::remove_file(&page) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                        _ => {}
                    },
                }
                let index = render_index(replica.products());
                write_atomically(&self.dir.join("index.html"), index.as_bytes())
            },
        )
    }
}

fn page_path(dir: &Path, id: i64) -> PathBuf {
    dir.join("products").join(format!("{id}.html"))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn price(cents: i64) -> String {
    format!("${}.{:02}", cents / 100, cents % 100)
}

/// A product's page; its version is in a `<meta>` tag.
pub fn render_page(p: &Product) -> String {
    let name = escape(&p.name);
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><meta name=\"version\" content=\"{}\">\
         <title>{name}</title></head>\n<body><h1>{name}</h1><p class=\"price\">{}</p>\
         <a href=\"../index.html\">All products</a></body></html>\n",
        p.version,
        price(p.price_cents)
    )
}

/// The index: every product, linked to its page.
pub fn render_index<'a>(products: impl Iterator<Item = &'a Product>) -> String {
    let mut html = String::from(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Products</title></head>\n<body><ul>\n",
    );
    for p in products {
        let _ = writeln!(
            html,
            "<li><a href=\"products/{}.html\">{}</a> {}</li>",
            p.id,
            escape(&p.name),
            price(p.price_cents)
        );
    }
    html + "</ul></body></html>\n"
}

/// Whether the site in `dir` shows exactly `products` (by id): their pages, no others, and the
/// index. The first difference is the error.
pub fn check(dir: &Path, products: &[Product]) -> Result<(), String> {
    let mut pages: Vec<String> = std::fs::read_dir(dir.join("products"))
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".html"))
        .collect();
    pages.sort_by_key(|name| name.trim_end_matches(".html").parse::<i64>().unwrap_or(-1));
    let expected: Vec<String> = products.iter().map(|p| format!("{}.html", p.id)).collect();
    if pages != expected {
        return Err(format!("pages {pages:?}, expected {expected:?}"));
    }
    for p in products {
        let page = std::fs::read_to_string(page_path(dir, p.id)).map_err(|e| e.to_string())?;
        if page != render_page(p) {
            return Err(format!(
                "page of product {} is not version {} ({:?})",
                p.id, p.version, p.name
            ));
        }
    }
    let index = std::fs::read_to_string(dir.join("index.html")).unwrap_or_default();
    match index == render_index(products.iter()) {
        true => Ok(()),
        false => Err("index.html does not list the products".into()),
    }
}
