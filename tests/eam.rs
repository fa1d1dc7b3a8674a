//! Seed 003's EAM function through the Rust API, against its hand-written gradient.
mod common;
use common::{eam_by_hand, eam_graph};
use fastad::Program;

#[test]
fn eam_matches_its_hand_written_gradient() {
    let (g, out) = eam_graph(100);
    let mut p = Program::<f64>::compile(&g, out, &[0]).unwrap();
    let x: Vec<f64> = (0..100).map(|i| (i as f64 * 0.37).sin()).collect();
    let (mut got, mut want) = (vec![0.0; 100], vec![0.0; 100]);
    let v = p.value_and_grad(&[&x], &mut [&mut got]).unwrap();
    let v_ref = eam_by_hand(&x, &mut want);
    assert!((v - v_ref).abs() <= 1e-12 * v_ref.abs());
    let scale = want.iter().fold(0.0f64, |m, g| m.max(g.abs()));
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-12 * scale);
    }
}
